"""`loadsim size` end to end on a real PostgreSQL: a short sweep (three sizes, capacity and
queue steps) streams valid steps, a fit and a recommendation, each checked against the
events themselves, the USL fit of those events and Erlang C from the measured rate and
hold; Ctrl-C mid-sweep stops cleanly with what was measured; bad flags are one line; the
plan (sizes, bounds, shuffled rounds, each step's configuration) without a server."""

from __future__ import annotations

import html
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loadsim.config.scenario import parse_scenarios
from loadsim.config.settings import Flags, resolve
from loadsim.config.thresholds import parse_threshold
from loadsim.errors import ScenarioError
from loadsim.size.erlang import predict, smallest_pool
from loadsim.size.plan import parse_pool_sizes, plan_sweep
from loadsim.size.recommend import recommend
from loadsim.size.usl import fit_usl
from tests.helpers import (
    Event,
    RunLoadsim,
    assert_user_error,
    by_name,
    first_line,
    parse_events,
    run_loadsim,
    start_loadsim,
    write_scenarios,
)

#: M/M/c: Poisson arrivals, exponential holds (server-side pg_sleep), a = 150/s x 5 ms.
QUEUE = """
    [scenarios.mmc]
    description = "Poisson arrivals, exponential holds"
    [scenarios.mmc.workload]
    hold = "exp(5ms)"
    [scenarios.mmc.arrivals]
    rate = 150
    distribution = "poisson"
"""
#: The event loop's lag p99 below which the client is not what the waits measure.
KEEPING_UP_MS = 10.0
SWEEP = ("--pool-sizes", "1,2,4", "--repeats", "1", "--step-duration", "1.5s", "--warmup", "0.5s")


@dataclass(frozen=True)
class Sweep:
    result: subprocess.CompletedProcess[str]
    events: list[Event]
    log: Path


@pytest.fixture(scope="module")
def sweep(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """One short sweep for the tests of this module: what it streams, and its --output."""
    directory = tmp_path_factory.mktemp("size")
    write_scenarios(directory, QUEUE)
    log = directory / "sweep.jsonl"
    result = run_loadsim(
        "size", "mmc", *SWEEP, "--database-url", database_url, "--output", str(log),
        cwd=directory, timeout=180,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return Sweep(result, parse_events(result.stdout), log)  # every line JSON, as declared


def test_a_short_sweep(sweep: Sweep) -> None:
    result, events = sweep.result, sweep.events
    assert sweep.log.read_text(encoding="utf-8") == result.stdout
    steps = by_name(events, "size.step")
    assert sorted((step["kind"], step["pool_size"]) for step in steps) == [
        ("capacity", 1), ("capacity", 2), ("capacity", 4), ("queue", 1), ("queue", 2),
        ("queue", 4),
    ]  # fmt: skip
    ends = by_name(events, "run.end")
    assert len(ends) == 6
    for step, end in zip(steps, ends, strict=True):  # each step follows its own run
        assert events.index(step) == events.index(end) + 1
        summary = end["summary"]
        assert step["checkouts_per_s"] == summary["checkouts_per_s"]
        assert step["checkouts"] == summary["checkouts"]
        assert step["wait_p99_ms"] == summary["wait_time_ms"]["p99"]
        assert step["elapsed_s"] == pytest.approx(1.5, abs=0.3)  # the warm-up is left out
        # the rate is over the measured window; the count has the holders finishing after it
        assert summary["checkouts_per_s"] * summary["elapsed_s"] <= summary["checkouts"] + 1
        assert summary["max_open"] <= step["pool_size"]  # max_overflow 0
        assert 0 <= step["p_wait"] <= 1
        assert step["server_memory_peak_mb"] == summary["server_memory_peak_mb"]
    # each pool size's memory on the server, where our backends can be read (this host)
    if by_name(events, "run.start")[0]["server_memory"]["measured"]:
        peak = {
            s["pool_size"]: s["server_memory_peak_mb"] for s in steps if s["kind"] == "capacity"
        }
        assert 0 < peak[1] < peak[4]
    for step in steps:
        if step["kind"] == "capacity":
            assert step["clients"] == 2 * step["pool_size"]
            assert step["slo_passed"] is None
            continue
        assert step["requests_per_s"] == pytest.approx(150, rel=0.3)
        # Erlang C from the step's own measured rate and mean hold
        model = predict(
            step["pool_size"],
            step["checkouts_per_s"],
            step["use_mean_ms"],
            hold_cv2=step["hold_cv2"],
        )
        assert step["model_p_wait"] == pytest.approx(model.p_wait, abs=1e-3)
        assert step["slo_passed"] == (step["slo_value"] < 25)
        assert step["slo_value"] == step["wait_p99_ms"]
        if model.stable and step["pool_size"] >= 2:  # where queueing theory holds
            assert step["p_wait"] == pytest.approx(model.p_wait_longer(1.0), abs=0.2)
    capacity = [step for step in steps if step["kind"] == "capacity"]
    rates = {step["pool_size"]: step["checkouts_per_s"] for step in capacity}
    # pg_sleep holds: connections add throughput. The pool is always full (two clients a
    # connection), so by Little's law each step's rate is its pool size over its mean hold;
    # how much a second connection adds depends on how busy the machine is (holds grow).
    for step in capacity:
        little = step["pool_size"] / (step["use_mean_ms"] / 1000)
        assert step["checkouts_per_s"] == pytest.approx(little, rel=0.25), step
    assert rates[2] > 1.1 * rates[1]
    (fit,) = by_name(events, "size.fit")
    ours = fit_usl(list(rates), list(rates.values()))
    assert fit["fitted"] and fit["points"] == 3
    assert fit["gamma"] == pytest.approx(ours.gamma, rel=1e-3)
    assert fit["knee"] == ours.knee(4)
    (advice,) = by_name(events, "size.recommendation")
    assert events[-1] == advice
    edge = fit["knee"] == 4 and (fit["peak"] is None or fit["peak"] > 4)
    again = recommend(
        steps, slo="wait_time_p99_ms < 25", knee=fit["knee"], target_rate=150, edge=edge
    )
    assert advice["pool_size"] == again.pool_size and advice["reason"] == again.reason
    assert advice["steps"] == 6 and not advice["interrupted"]
    # Where queueing theory holds (Poisson arrivals, exponential holds), the recommendation
    # is Erlang C's own smallest pool for the SLO, from the measured rate and hold (or, the
    # measured p99 being one sample's tail, the next size measured). It holds only while the
    # client keeps up: on a machine too busy for that (other tests beside this one), the
    # event loop's own lag is in every wait, and the SLO on p99 may be met by no size.
    queue = {step["pool_size"]: step for step in steps if step["kind"] == "queue"}
    at = queue[2]
    erlang = smallest_pool(
        at["checkouts_per_s"], at["use_mean_ms"], 25, hold_cv2=at["hold_cv2"] or 1.0
    )
    assert erlang is not None and erlang <= 4
    measured_sizes = sorted(queue)
    expected = min(size for size in measured_sizes if size >= erlang)
    # the measured p99 is one sample's tail of some 200 waits: the recommendation may be the
    # measured size on either side of Erlang C's, never further
    at_expected = measured_sizes.index(expected)
    neighbours = measured_sizes[max(at_expected - 1, 0) : at_expected + 2]
    lag = max(step["loop_lag_p99_ms"] or 0.0 for step in queue.values())
    if lag <= KEEPING_UP_MS:
        assert advice["pool_size"] in neighbours, (advice, erlang, lag)
    else:  # the client's lag only adds to the waits: larger, or none that meets the SLO
        assert advice["pool_size"] is None or advice["pool_size"] >= neighbours[0], (advice, lag)
    assert result.returncode == (0 if advice["met"] else 1), result.stderr
    assert "recommendation:" in result.stderr or "no pool size qualifies" in result.stderr
    assert "checkouts/s" in result.stderr  # the table


def test_report_draws_the_sweep(sweep: Sweep, tmp_path: Path) -> None:
    from loadsim.report import build_report

    report = build_report([sweep.log], tmp_path / "out")
    charts = {chart.name: chart for chart in report.charts}
    assert set(charts) == {"mmc-size-throughput.png", "mmc-size-time.png", "mmc-size-queue.png"}
    for name in charts:
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = by_name(sweep.events, "size.step")
    (fit,) = by_name(sweep.events, "size.fit")
    (advice,) = by_name(sweep.events, "size.recommendation")
    throughput = charts["mmc-size-throughput.png"].data
    assert sorted(throughput["points"]) == sorted(
        (step["pool_size"], step["checkouts_per_s"]) for step in steps if step["kind"] == "capacity"
    )
    assert throughput["knee"] == fit["knee"] and throughput["recommended"] == advice["pool_size"]
    for point in fit["predicted"]:  # the drawn curve is the fit's own
        n, x = min(throughput["curve"], key=lambda p: abs(p[0] - point["pool_size"]))
        assert n == pytest.approx(point["pool_size"], abs=0.02)
        assert x == pytest.approx(point["checkouts_per_s"], rel=0.01)
    queue = charts["mmc-size-queue.png"].data
    sizes, measured = queue["p_wait"]
    assert sizes == [1, 2, 4]
    assert measured == [
        s["p_wait"] for s in sorted(steps, key=lambda s: s["pool_size"]) if s["kind"] == "queue"
    ]
    page = report.index.read_text(encoding="utf-8")
    assert html.escape(advice["reason"]) in page  # the recommendation in words


def test_ctrl_c_mid_sweep(database_url: str, tmp_path: Path) -> None:
    write_scenarios(tmp_path, QUEUE)
    process = start_loadsim(
        "size", "mmc", "--pool-sizes", "1,2,4", "--repeats", "3", "--step-duration", "1s",
        "--warmup", "0.2s", "--database-url", database_url, cwd=tmp_path,
    )  # fmt: skip
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the first step is in
        lines.append(first_line(process))
        if '"size.step"' in lines[-1] or not lines[-1]:
            break
    process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    events = parse_events("".join(lines) + rest)
    steps = by_name(events, "size.step")
    assert 1 <= len(steps) < 18
    (advice,) = by_name(events, "size.recommendation")
    assert advice["interrupted"] and advice["steps"] == len(steps)
    assert by_name(events, "size.fit")
    assert "interrupted after" in stderr


@pytest.mark.parametrize(
    ("flags", "detail"),
    [
        (("--pool-sizes", "two"), "--pool-sizes"),
        (("--slo", "wait_time_p99 < 25"), "--slo"),
        (("--report", "charts"), "give --output FILE too"),
    ],
)
def test_bad_flags_are_one_line(
    loadsim: RunLoadsim, tmp_path: Path, flags: tuple[str, ...], detail: str
) -> None:
    write_scenarios(tmp_path, QUEUE)
    assert_user_error(loadsim("size", "mmc", *flags), 2, detail)


def _plan(**changes: Any) -> None:
    config = resolve(PARSED, PARSED.get("mmc"), {}, Flags())
    options: dict[str, Any] = {
        "sizes": parse_pool_sizes("1,2"), "slo": parse_threshold("timeouts == 0"),
        "rate": None, "step_s": 1.0, "warmup_s": 0.1, "repeats": 1, "instances": 1,
    }  # fmt: skip
    plan_sweep(config, **{**options, **changes})


PARSED = parse_scenarios(textwrap.dedent(QUEUE), Path("scenarios.toml"))


@pytest.mark.parametrize(
    ("text", "detail"),
    [("8..4", "--pool-sizes"), ("0,4", "each size must be 1"), ("1,x", "--pool-sizes")],
)
def test_bad_pool_sizes(text: str, detail: str) -> None:
    with pytest.raises(ScenarioError, match=detail):
        parse_pool_sizes(text)


def test_pool_sizes() -> None:
    assert parse_pool_sizes("8, 2,4,2") == (2, 4, 8)
    assert parse_pool_sizes("4..7") == (4, 5, 6, 7)
    assert parse_pool_sizes("auto") == (1, 2, 4, 8, 16, 32)


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"repeats": 0}, "--repeats"),
        ({"step_s": 0.0}, "--step-duration"),
        ({"rate": -3.0}, "--rate"),
    ],
)
def test_bad_plans(changes: dict[str, Any], detail: str) -> None:
    with pytest.raises(ScenarioError, match=detail):
        _plan(**changes)


def test_the_plan_shuffles_each_round_of_steps() -> None:
    config = resolve(PARSED, PARSED.get("mmc"), {}, Flags(seed=3))
    plan = plan_sweep(
        config, sizes=(1, 2, 4), slo=parse_threshold("wait_time_p99_ms < 25"), rate=None,
        step_s=1.0, warmup_s=0.1, repeats=3, instances=1,
    )  # fmt: skip
    assert plan.target_rate == 150  # the scenario's arrivals
    rounds = [plan.steps[i * 6 : (i + 1) * 6] for i in range(3)]
    for number, steps in enumerate(rounds):  # each round: every step once, in its own order
        assert sorted((s.kind, s.pool_size) for s in steps) == sorted(
            (kind, size) for kind in ("capacity", "queue") for size in (1, 2, 4)
        )
        assert {s.repeat for s in steps} == {number}
    orders = [[(s.kind, s.pool_size) for s in steps] for steps in rounds]
    assert len({tuple(order) for order in orders}) > 1  # not the same order every round
    for step in plan.steps:
        assert step.config.pool.max_overflow == 0 and step.config.pool.pool_size == step.pool_size
        if step.kind == "capacity":
            assert step.config.arrivals is None
            assert step.config.workload.clients == 2 * step.pool_size
            assert step.config.workload.think.mean == 0
        else:
            assert step.config.arrivals is not None and step.config.arrivals.rate == 150
            assert [t.expression for t in step.config.thresholds] == ["wait_time_p99_ms < 25"]
        assert step.config.workload.duration == pytest.approx(1.1)
