"""Open workloads at the edges of their rates: a rate of zero, stages at zero, rates beyond
what one process can start, and the driver at the highest rate allowed, which keeps to its
schedule (dropping and counting what it cannot start), never holds up the event loop, and
stops at once on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from loadsim.config.limits import MAX_ARRIVAL_RATE
from loadsim.config.scenario import (
    Arrivals,
    Distribution,
    PoolConfig,
    Stage,
    Workload,
    parse_scenarios,
)
from loadsim.config.settings import Flags, resolve
from loadsim.errors import ScenarioError
from loadsim.run.monitor import current_client
from loadsim.run.workload import ClientFleet, plan_clients
from tests.helpers import (
    Monitored,
    RunLoadsim,
    by_name,
    parse_events,
    run_events,
    start_loadsim,
    wait_for_start,
    write_scenarios,
)

UNREACHABLE_URL = "postgresql://someone@127.0.0.1:1/db"

SCENARIOS = f"""
[scenarios.fastest]
duration = "2s"
pool = {{ pool_size = 5, max_overflow = 0 }}
workload = {{ hold = "1ms" }}
arrivals = {{ rate = {MAX_ARRIVAL_RATE:.0f} }}

[scenarios.fastest-poisson]
duration = "2s"
pool = {{ pool_size = 5, max_overflow = 0 }}
workload = {{ hold = "1ms" }}
arrivals = {{ rate = {MAX_ARRIVAL_RATE:.0f}, distribution = "poisson" }}

[scenarios.pause]
duration = "3s"
pool = {{ pool_size = 5, max_overflow = 0 }}
workload = {{ hold = "5ms" }}

[scenarios.pause.arrivals]
rate = 50
stages = [
    {{ duration = "1s", target = 50 }},
    {{ duration = "1ms", target = 0 }},
    {{ duration = "1s", target = 0 }},
    {{ duration = "1ms", target = 50 }},
]

[scenarios.fade]
duration = "2s"
pool = {{ pool_size = 5, max_overflow = 0 }}
workload = {{ hold = "5ms" }}
arrivals = {{ rate = 50, stages = [{{ duration = "1s", target = 0 }}] }}
"""


def parse(arrivals: str, duration: str = "2s") -> Any:
    return parse_scenarios(
        f'[scenarios.x]\nduration = "{duration}"\narrivals = {arrivals}\n', Path("x.toml")
    )


# ------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "arrivals",
    [
        "{ rate = 1e8 }",
        "{ rate = 1e300 }",
        f"{{ rate = {MAX_ARRIVAL_RATE + 1:.0f} }}",
        "{ rate = 10, stages = [{ duration = '1s', target = 1e8 }] }",
    ],
    ids=["1e8", "1e300", "just-above", "stage-target"],
)
def test_rates_beyond_what_one_process_can_start_are_refused(arrivals: str) -> None:
    with pytest.raises(ScenarioError, match=r"at most 100,000 requests per second .*--instances"):
        parse(arrivals)


@pytest.mark.parametrize(
    ("arrivals", "message"),
    [
        ("{ rate = 10, stages = [{ duration = 1e-320, target = 1e5 }] }", "at least 1ms"),
        ("{ rate = 10, stages = [{ duration = '0s', target = 5 }] }", "at least 1ms"),
        (
            "{ rate = 10, stages = [" + "{ duration = '1ms', target = 5 }, " * 1001 + "] }",
            "at most 1000 stages",
        ),
    ],
    ids=["denormal-stage", "zero-stage", "too-many-stages"],
)
def test_stages_are_bounded(arrivals: str, message: str) -> None:
    """A stage of 1e-320 s made the ramp's slope infinite (and the rate NaN)."""
    with pytest.raises(ScenarioError, match=message):
        parse(arrivals)


def test_the_highest_rate_is_accepted() -> None:
    (scenario,) = parse(f"{{ rate = {MAX_ARRIVAL_RATE} }}").scenarios.values()
    assert scenario.arrivals.rate == MAX_ARRIVAL_RATE


@pytest.mark.parametrize(
    "arrivals",
    [
        "{ rate = 0 }",
        "{ rate = 0, stages = [{ duration = '1s', target = 0 }] }",
        # the ramp comes after the end of the run
        "{ rate = 0, stages = [{ duration = '2s', target = 0 }, { duration = '1s', target = 9 }] }",
    ],
    ids=["rate", "stages", "ramp-after-the-end"],
)
def test_a_rate_of_zero_throughout_is_refused(arrivals: str) -> None:
    """It divided by zero (a traceback after run.start, and an all-zero summary with exit 0
    in a fleet): a run that can start nothing measures nothing."""
    with pytest.raises(ScenarioError, match="the rate is 0 for the whole duration"):
        parse(arrivals)


def test_a_zero_rate_with_a_later_ramp_is_valid_until_the_duration_cuts_it(tmp_path: Path) -> None:
    scenarios = parse(
        "{ rate = 0, stages = [{ duration = '2s', target = 0 }, { duration = '1s', target = 9 }] }",
        duration="3s",
    )
    resolve(scenarios, scenarios.get("x"), {}, Flags())
    with pytest.raises(ScenarioError, match="rate is 0 for the whole duration"):
        resolve(scenarios, scenarios.get("x"), {}, Flags(duration="2s"))


@pytest.mark.parametrize("instances", ["1", "2"])
def test_a_zero_rate_is_refused_by_the_command_before_anything_starts(
    loadsim: RunLoadsim, tmp_path: Path, instances: str
) -> None:
    path = write_scenarios(tmp_path, '[scenarios.zero]\nduration = "2s"\narrivals = { rate = 0 }\n')
    result = loadsim(
        "run",
        "zero",
        "--file",
        str(path),
        "--instances",
        instances,
        "--database-url",
        UNREACHABLE_URL,
        "-q",
        timeout=60,
    )
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("loadsim: error:")
    assert "scenario 'zero' [arrivals]: the rate is 0" in line


def test_a_rate_too_high_is_refused_by_the_command(loadsim: RunLoadsim, tmp_path: Path) -> None:
    path = write_scenarios(
        tmp_path, '[scenarios.flood]\nduration = "2s"\narrivals = { rate = 1e8 }\n'
    )
    result = loadsim("run", "flood", "--file", str(path), "--database-url", UNREACHABLE_URL, "-q")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "key 'rate'" in result.stderr and "at most 100,000" in result.stderr


# --------------------------------------------------------------- the arithmetic


def brute_force_time_after(arrivals: Arrivals, start: float, amount: float) -> float:
    """Where the integral of the rate from `start` reaches `amount`, by 1 µs steps."""
    step, moment = 1e-6, start
    while amount > 0:
        amount -= arrivals.rate_at(moment + step / 2) * step
        moment += step
    return moment


def test_time_after_is_exact_over_ramps_and_zero_stages() -> None:
    arrivals = Arrivals(rate=10, stages=(Stage(1, 0), Stage(1, 0), Stage(1, 10)))
    # the tail of the ramp down (0.05), nothing for a second, then up the ramp to 2.99..
    assert arrivals.time_after(0.9, 1.0, 10) == pytest.approx(
        brute_force_time_after(arrivals, 0.9, 1.0), abs=1e-5
    )
    assert arrivals.time_after(0.9, 1.0, 10) > 2.0
    assert arrivals.expected(0, 3) == pytest.approx(10)  # 5 down, 0, 5 up
    assert arrivals.expected(0, 4) == pytest.approx(20)  # and 10/s from then on
    # The next request of a zero stage comes when the rate rises again, not during it.
    assert arrivals.time_after(1.2, 0.0, 10) == 2.0
    assert arrivals.time_after(0.0, 0.0, 10) == 0.0
    # A ramp from zero: 25 t^2 = 1 at t = 0.2.
    ramp = Arrivals(rate=0, stages=(Stage(2, 100), Stage(2, 100)))
    assert ramp.time_after(0.0, 1.0, 4.0) == pytest.approx(0.2, abs=1e-9)
    assert ramp.time_after(0.0, 299.0, 4.0) == pytest.approx(3.99)
    assert ramp.time_after(0.0, 300.0, 4.0) == float("inf")  # at the end: not before it


def test_time_after_never_divides_by_zero_or_steps_through_time() -> None:
    """The rate was integrated in 1 ms steps: rate 0 divided by zero, and a low rate over a
    long run took millions of steps for each request (the loop held all the while)."""
    assert Arrivals(rate=0).time_after(0.0, 0.0, 4.0) == float("inf")
    assert Arrivals(rate=0).time_after(0.0, 1.0, 4.0) == float("inf")
    began = time.perf_counter()
    assert Arrivals(rate=1e-6).time_after(0.0, 1.0, 24 * 3600.0) == float("inf")
    assert Arrivals(rate=1e-6).time_after(0.0, 1.0, float("inf")) == pytest.approx(1e6)
    assert Arrivals(rate=1e300).time_after(0.0, 1.0, 10.0) == pytest.approx(1e-300)
    assert time.perf_counter() - began < 0.05


# ------------------------------------------------------------------- the driver


class HeldTheLoop(Exception):
    pass


@contextmanager
def loop_must_not_be_held(seconds: float) -> Iterator[None]:
    """A driver that never yields cannot be cancelled by asyncio: SIGALRM interrupts it."""

    def interrupt(number: int, frame: FrameType | None) -> None:
        raise HeldTheLoop(f"the event loop was held for {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("distribution", ["constant", "poisson"])
async def test_the_driver_never_holds_the_loop_even_far_beyond_the_bound(
    monitored: Monitored, distribution: str
) -> None:
    """In process, past validation: 10^9 requests a second (the issue's 1e8 hung the run).
    Other tasks keep their turns, every request due is counted, the pool is still used, and
    the driver stops as soon as it is told to."""
    monitor, _ = monitored(PoolConfig(pool_size=2, max_overflow=0))
    workload = Workload(duration=3.0, hold=Distribution("fixed", 0.001))
    clients = plan_clients(workload, (), open_workload=True)
    fleet = ClientFleet(
        monitor.engine,
        monitor,
        monitor.events,
        workload,
        monitor.metrics,
        1,
        clients,
        arrivals=Arrivals(rate=1e9, distribution=distribution, max_in_flight=50),
    )
    gaps: list[float] = []

    async def tick() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            gaps.append(time.perf_counter() - before - 0.005)

    with loop_must_not_be_held(10.0):
        ticker = asyncio.create_task(tick())
        driver = asyncio.create_task(fleet.run_client(clients[0]))
        await asyncio.sleep(1.0)
        fleet.stopping = True
        told = time.perf_counter()
        await asyncio.wait_for(driver, 5)
        stopped_after = time.perf_counter() - told
        ticker.cancel()
    metrics = monitor.metrics
    assert stopped_after < 0.5
    assert max(gaps) < 0.1, f"the loop was held for {max(gaps) * 1000:.0f} ms"
    assert metrics.requests == pytest.approx(1e9, rel=0.25)  # counted: on schedule
    assert 0 < metrics.dropped < metrics.requests
    assert metrics.checkouts > 10


# ------------------------------------------------------------------------- runs


def run_open(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path, name: str, *extra: str
) -> list[dict[str, Any]]:
    file = write_scenarios(tmp_path, SCENARIOS)
    return run_events(
        loadsim, name, "--file", str(file), "--database-url", database_url, "-q", *extra
    )


@pytest.mark.parametrize("name", ["fastest", "fastest-poisson"])
def test_the_highest_rate_keeps_to_its_schedule_and_the_loop_keeps_up(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path, name: str
) -> None:
    """100,000 requests a second into a pool of five: the driver used to hold the event loop
    (no run.start, Ctrl-C ignored). Now every request due is counted, those it could not
    start are dropped, and the loop lags no more than a moment."""
    events = run_open(loadsim, database_url, tmp_path, name, "--events", "monitor.*", "--seed", "1")
    summary = events[-1]["summary"]
    assert summary["stop_reason"] == "duration"
    assert summary["requests"] == pytest.approx(2 * MAX_ARRIVAL_RATE, rel=0.1)
    assert 0 < summary["dropped"] < summary["requests"]
    assert summary["checkouts"] > 100
    assert summary["loop_lag_ms"]["p99"] < 250
    assert by_name(events, "monitor.stats")  # the other tasks of the run had their turns


def test_the_highest_rate_stops_at_once_on_ctrl_c(database_url: str, tmp_path: Path) -> None:
    file = write_scenarios(tmp_path, SCENARIOS)
    process = start_loadsim(
        "run",
        "fastest",
        "--file",
        str(file),
        "--duration",
        "60s",
        "--database-url",
        database_url,
        "-q",
        cwd=tmp_path,
    )
    try:
        first = wait_for_start(process)
        time.sleep(1.0)
        signalled = time.monotonic()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert "Traceback" not in stderr
    assert process.returncode == 130, stderr
    assert took < 2.0, f"stopped {took:.1f} s after SIGINT"
    events = [json.loads(first), *parse_events(stdout)]
    end = events[-1]
    assert end["event"] == "run.end"
    assert end["summary"]["interrupted"] is True
    assert end["summary"]["requests"] > 0


def test_a_stage_at_zero_starts_nothing_and_the_run_goes_on(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    events = run_open(loadsim, database_url, tmp_path, "pause")
    summary = events[-1]["summary"]
    schedule = Arrivals(
        rate=50, stages=(Stage(1, 50), Stage(0.001, 0), Stage(1, 0), Stage(0.001, 50))
    )
    assert summary["requests"] == pytest.approx(schedule.expected(0, 3), abs=3)
    assert summary["stop_reason"] == "duration"
    # when each request asked the pool: its client.acquired's t - wait_ms
    asked = [event["t"] - event["wait_ms"] / 1000 for event in by_name(events, "client.acquired")]
    # (a request due just before the pause may start a little late on a busy machine)
    assert not [t for t in asked if 1.3 < t < 1.9], "requests started while the rate was 0"
    assert [t for t in asked if t > 2.1], "none started after the pause"


def test_a_rate_that_falls_to_zero_still_lasts_its_duration(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    """The driver used to end with its schedule, and the run with it ("iterations", at 1 s)."""
    events = run_open(loadsim, database_url, tmp_path, "fade")
    summary = events[-1]["summary"]
    assert summary["requests"] == pytest.approx(25, abs=2)
    assert summary["stop_reason"] == "duration"
    assert summary["elapsed_s"] >= 2.0


async def test_a_stop_cancels_waiting_requests_in_the_pools_own_order(monitored: Monitored) -> None:
    """asyncio.Queue takes a cancelled waiter out of its line by a search from the front:
    cancelled in another order than the line's, 28,000 waiting requests took 5 to 7 s to stop
    (bench/stop.py measures it). Here the waiters of a real pool, handed over in a shuffled
    order, are cancelled in the order they began to wait."""
    monitor, _ = monitored(PoolConfig(pool_size=1, max_overflow=0, pool_timeout=60))
    workload = Workload(duration=60.0, hold=Distribution("fixed", 60.0))
    fleet = ClientFleet(monitor.engine, monitor, monitor.events, workload, monitor.metrics, 1, [])
    cancelled: list[int] = []

    async def wait_for_a_connection(client: int) -> None:
        current_client.set(client)
        monitor.waiting_started(client, time.perf_counter())
        try:
            async with monitor.engine.connect():
                pass
        except asyncio.CancelledError:
            cancelled.append(client)
            raise

    clients = 2000
    async with monitor.engine.connect():  # the one connection is taken: everyone waits
        tasks = {}
        for client in range(clients):
            tasks[client] = asyncio.create_task(wait_for_a_connection(client))
            await asyncio.sleep(0)  # each in turn joins the pool's line
        await asyncio.sleep(0.05)
        assert monitor.waiting_clients() == list(range(clients))
        shuffled = list(tasks.items())
        random.Random(7).shuffle(shuffled)
        fleet.cancel_waiters_first(dict(shuffled), cancel_holders=False)
        await asyncio.wait(tasks.values())
    assert cancelled == list(range(clients))
