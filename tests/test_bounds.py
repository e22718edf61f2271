"""Numbers beyond what this process, this machine or PostgreSQL can do: every integer of a
scenario file, a flag or an environment variable is bounded (64-bit counts and seeds,
max_connections' 262143, instances per CPU, clients by the memory available; durations to 30
days, waits to the histograms' hour, the monitor to 10 ms; a threshold's number to 40
characters), and a value
past a bound is one error line naming the key, flag or variable, exit 2, no traceback and
nothing started: no event, no connection, no embedded server. The values at the bounds run.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from loadsim.config.limits import (
    BYTES_PER_CLIENT,
    INT64_MAX,
    POSTGRES_MAX_CONNECTIONS,
    SEED_MAX,
    available_memory,
    max_instances,
)
from loadsim.config.scenario import parse_scenarios
from loadsim.config.settings import Flags, resolve
from loadsim.errors import ScenarioError
from tests.helpers import RunLoadsim, assert_user_error, by_name, run_events, write_scenarios

SCENARIO_ERROR = 2
#: Nothing listens on port 1: a value that got past validation would fail there with exit 3.
UNREACHABLE_URL = "postgresql://someone@127.0.0.1:1/db"
HUGE = "99999999999999999999"  # 20 digits: more than 64 bits
THOUSANDS_OF_DIGITS = "9" * 5000  # more than Python's int() converts from text


def assert_refused(result: subprocess.CompletedProcess[str], *details: str) -> str:
    """Exit 2, one short error line holding every detail, no traceback, no event."""
    line = assert_user_error(result, SCENARIO_ERROR, *details)
    assert len(line) < 600, line  # a value of thousands of digits is not repeated
    return line


def run_offline(
    loadsim: RunLoadsim, *arguments: str, **options: object
) -> subprocess.CompletedProcess[str]:
    return loadsim(
        "run",
        "--duration",  # before the arguments: a --duration among them wins
        "1s",
        *arguments,
        "--database-url",
        UNREACHABLE_URL,
        "-q",
        timeout=60,
        **options,
    )


# ------------------------------------------------------------------------------ flags


@pytest.mark.parametrize(
    ("arguments", "details"),
    [
        pytest.param(
            ("--iterations", HUGE), ("--iterations", f"at most {INT64_MAX}", HUGE), id="iterations"
        ),
        pytest.param(("--seed", HUGE), ("--seed", f"at most {SEED_MAX}", HUGE), id="seed"),
        pytest.param(("--seed", "-1"), ("--seed", "at least 0"), id="negative-seed"),
        pytest.param(("--clients", HUGE), ("--clients", f"at most {INT64_MAX}"), id="clients"),
        pytest.param(
            ("--clients", "50001"),
            ("--clients 50001", "at most 50,000", "than one process drives", "--instances"),
            id="clients-beyond-one-process",
        ),
        pytest.param(
            ("--pool-size", str(INT64_MAX)),
            ("--pool-size", f"at most {POSTGRES_MAX_CONNECTIONS}", "max_connections"),
            id="pool-size",
        ),
        pytest.param(
            ("--max-overflow", HUGE),
            ("--max-overflow", str(POSTGRES_MAX_CONNECTIONS)),
            id="max-overflow",
        ),
        pytest.param(
            ("--pool-size", "200000", "--max-overflow", "100000"),
            ("--pool-size", "300000 connections", str(POSTGRES_MAX_CONNECTIONS)),
            id="pool-size-plus-overflow",
        ),
        pytest.param(
            ("--instances", "100000"),
            ("--instances", f"at most {max_instances()}", "per CPU"),
            id="instances",
        ),
        pytest.param(("--instances", HUGE), ("--instances", "per CPU"), id="huge-instances"),
        pytest.param(("--rate", HUGE), ("--rate", "at most 100,000 requests"), id="rate"),
        pytest.param(("--rate", "1e400"), ("--rate", "a number of requests"), id="infinite-rate"),
        pytest.param(("--ramp-up", "2s"), ("--ramp-up", "longer than the run"), id="ramp-up"),
        pytest.param(("--ramp-up", HUGE), ("--ramp-up", "at most 30 days"), id="huge-ramp-up"),
        pytest.param(
            ("--duration", "1000h"), ("--duration", "at most 30 days", "1000h"), id="duration"
        ),
        pytest.param(
            ("--pool-timeout", "2h"),
            ("--pool-timeout", "to 3600s", "waits are measured up to an hour"),
            id="pool-timeout",
        ),
        pytest.param(
            ("--threshold", f"timeouts < {THOUSANDS_OF_DIGITS}"),
            ("--threshold", "5000 characters", "at most 40"),
            id="threshold-of-thousands-of-digits",
        ),
        pytest.param(
            ("--pool-size", "100000", "--max-overflow", "0", "--instances", "3"),
            ("--pool-size", "x 3 instances", str(POSTGRES_MAX_CONNECTIONS)),
            id="connections-of-a-fleet",
        ),
    ],
)
def test_a_flag_beyond_its_bound_is_refused(
    loadsim: RunLoadsim, arguments: tuple[str, ...], details: tuple[str, ...]
) -> None:
    assert_refused(run_offline(loadsim, "normal", *arguments), *details)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://someone@127.0.0.1:99999/db",
        "postgresql://someone@127.0.0.1/db?port=99999",
        f"postgresql://someone@127.0.0.1:{THOUSANDS_OF_DIGITS}/db",
    ],
    ids=["port", "port-parameter", "port-of-thousands-of-digits"],
)
def test_a_port_beyond_65535_is_refused(loadsim: RunLoadsim, url: str) -> None:
    assert_refused(loadsim("run", "normal", "--database-url", url, "-q"), "port", "65535")
    assert_refused(loadsim("run", "normal", "-q", env={"DATABASE_URL": url}), "port", "65535")


def test_an_impossible_pool_never_reaches_the_embedded_server(loadsim: RunLoadsim) -> None:
    """No DATABASE_URL: an embedded server would be started with max_connections sized for
    the pool; the pool is refused first, at once."""
    began = time.monotonic()
    result = loadsim("run", "normal", "--pool-size", "9223372036854775807", "-q", timeout=60)
    assert_refused(result, "--pool-size", str(POSTGRES_MAX_CONNECTIONS))
    assert time.monotonic() - began < 10  # an embedded server takes seconds to start and stop


# ------------------------------------------------------------------ the environment


@pytest.mark.parametrize(
    ("variable", "value", "details"),
    [
        ("POOL_SIZE", str(INT64_MAX), ("POOL_SIZE", f"at most {POSTGRES_MAX_CONNECTIONS}")),
        ("MAX_OVERFLOW", HUGE, ("MAX_OVERFLOW", f"at most {POSTGRES_MAX_CONNECTIONS}")),
        ("POOL_SIZE", THOUSANDS_OF_DIGITS, ("POOL_SIZE", "at most", "5000 characters")),
        ("POOL_SIZE", "1" + "0" * 40, ("POOL_SIZE", "at most")),
    ],
    ids=["pool-size", "max-overflow", "thousands-of-digits", "forty-one-digits"],
)
def test_an_environment_variable_beyond_its_bound_is_refused(
    loadsim: RunLoadsim, variable: str, value: str, details: tuple[str, ...]
) -> None:
    assert_refused(run_offline(loadsim, "normal", env={variable: value}), *details)


# ----------------------------------------------------------------- scenario files


@pytest.mark.parametrize(
    ("body", "details"),
    [
        (f"iterations = {HUGE}", ("'iterations'", f"at most {INT64_MAX}")),
        (f"clients = {HUGE}", ("'clients'", f"at most {INT64_MAX}")),
        ("instances = 100000", ("'instances'", "per CPU")),
        (f"pool = {{ pool_size = {INT64_MAX} }}", ("'pool_size'", str(POSTGRES_MAX_CONNECTIONS))),
        ("pool = { max_overflow = 262144 }", ("'max_overflow'", str(POSTGRES_MAX_CONNECTIONS))),
        (
            f'[[scenarios.x.groups]]\nname = "many"\nclients = {HUGE}',
            ("'clients'", f"at most {INT64_MAX}"),
        ),
        (
            f"arrivals = {{ rate = 10, max_in_flight = {HUGE} }}",
            ("'max_in_flight'", f"at most {INT64_MAX}"),
        ),
        (
            'faults = { idle_session_timeout = "700h" }',
            ("'idle_session_timeout'", "2147483647 ms"),
        ),
        (
            'faults = { idle_in_transaction_session_timeout = "25d" }',
            ("'idle_in_transaction_session_timeout'", "expected"),
        ),
        (f"clients = {THOUSANDS_OF_DIGITS}", ("thousands of digits",)),
        ('monitor = { interval = "1ms" }', ("'interval'", "from 10ms", "measures itself")),
        ('monitor = { interval = "2h" }', ("'interval'", "to 3600s")),
        ('workload = { hold = "uniform(1s, 1000h)" }', ("'hold'", "at most 30 days")),
        ('ramp_up = "1000h"', ("'ramp_up'", "at most 30 days")),
        (
            f'thresholds = ["wait_time_p99_ms < 1{"0" * 5000}"]',
            ("threshold", "5001 characters", "at most 40"),
        ),
    ],
    ids=[
        "iterations",
        "clients",
        "instances",
        "pool_size",
        "max_overflow",
        "group-clients",
        "max_in_flight",
        "idle_session_timeout",
        "idle_in_transaction_session_timeout",
        "thousands-of-digits",
        "monitor-interval-too-short",
        "monitor-interval-too-long",
        "hold",
        "ramp_up",
        "threshold-of-thousands-of-digits",
    ],
)
def test_a_file_value_beyond_its_bound_is_refused(
    loadsim: RunLoadsim, tmp_path: Path, body: str, details: tuple[str, ...]
) -> None:
    path = write_scenarios(tmp_path, f'[scenarios.x]\nduration = "1s"\n{body}\n')
    assert_refused(run_offline(loadsim, "x", "--file", str(path)), str(path), *details)
    assert_refused(loadsim("validate", str(path)), str(path), *details)


# ---------------------------------------------------------------------- memory


def clients_that_fit() -> int:
    """About as many waiting clients as the check lets one run have on this machine now."""
    return available_memory().available // BYTES_PER_CLIENT


def test_more_clients_than_memory_holds_are_refused_with_the_figures(loadsim: RunLoadsim) -> None:
    """The issue's `clients = 10^7` ended in "Fatal Python error: Cannot recover from
    MemoryErrors" with the server left running; twice what fits is refused before anything
    starts, with the memory it would take and the memory there is."""
    clients = max(10**7, 2 * clients_that_fit())
    line = assert_refused(
        run_offline(loadsim, "normal", "--clients", str(clients)),
        f"--clients {clients}",
        "memory",
        "16 KiB each",
        "available",
        "at most",
    )
    assert "GiB" in line or "MiB" in line


def test_memory_is_counted_for_every_instance(loadsim: RunLoadsim, tmp_path: Path) -> None:
    clients = int(0.7 * clients_that_fit())  # fits in one instance, not in two
    path = write_scenarios(
        tmp_path,
        f'[scenarios.x]\nduration = "1s"\ninstances = 2\n'
        f'[[scenarios.x.groups]]\nname = "crowd"\nclients = {clients}\n'
        "[scenarios.x.pool]\npool_size = 1\n",
    )
    assert_refused(
        run_offline(loadsim, "x", "--file", str(path), "--clients", "1"),
        "key 'clients' of its [[groups]]",
        "x 2 instances (key 'instances')",
        "memory",
    )


def test_an_open_workload_counts_its_requests_in_flight(tmp_path: Path) -> None:
    in_flight = 2 * clients_that_fit()
    scenarios = parse_scenarios(
        f'[scenarios.x]\nduration = "1s"\n'
        f"arrivals = {{ rate = 10, max_in_flight = {in_flight} }}\n",
        tmp_path / "x.toml",
    )
    with pytest.raises(
        ScenarioError, match=r"key 'max_in_flight' of its \[arrivals\] = \d+: .* memory"
    ):
        resolve(scenarios, scenarios.get("x"), {}, Flags())


# ------------------------------------------------------------------ connections


def test_the_largest_pool_postgresql_can_take_is_accepted(tmp_path: Path) -> None:
    scenarios = parse_scenarios(
        '[scenarios.x]\nduration = "1s"\nclients = 1\n', tmp_path / "x.toml"
    )
    largest = POSTGRES_MAX_CONNECTIONS - 20  # the embedded server keeps 20 free
    config = resolve(scenarios, scenarios.get("x"), {}, Flags(pool_size=largest, max_overflow=0))
    assert config.pool.capacity == largest
    with pytest.raises(ScenarioError, match="more than any PostgreSQL server takes"):
        resolve(scenarios, scenarios.get("x"), {}, Flags(pool_size=largest, max_overflow=1))
    environment = {"POOL_SIZE": str(largest), "MAX_OVERFLOW": "1"}
    with pytest.raises(ScenarioError, match="environment variable"):
        resolve(scenarios, scenarios.get("x"), environment, Flags())


def test_an_unlimited_pool_on_the_embedded_server_is_bounded_by_its_clients(tmp_path: Path) -> None:
    """NullPool (or max_overflow -1) may open a connection per client: the embedded server
    would be started with max_connections above PostgreSQL's largest (one process drives at
    most 50,000 clients: six instances of them)."""
    if clients_that_fit() < 400_000:
        pytest.skip("300,000 clients do not fit in this machine's memory")
    scenarios = parse_scenarios(
        '[scenarios.x]\nduration = "1s"\nclients = 50000\npool = { pool_class = "null" }\n',
        tmp_path / "x.toml",
    )
    flags = Flags(instances=6)
    with pytest.raises(ScenarioError, match=r"key 'clients' = 50000: a pool with no limit"):
        resolve(scenarios, scenarios.get("x"), {}, flags)
    external = resolve(scenarios, scenarios.get("x"), {"DATABASE_URL": UNREACHABLE_URL}, flags)
    assert external.most_connections == 50000  # a real server's own limit: its errors show


# ------------------------------------------------------------------ at the bounds


def test_the_largest_seed_and_iterations_run_and_are_written(
    loadsim: RunLoadsim, database_url: str
) -> None:
    """The writer crashed on integers beyond 64 bits; at the bounds, they are written."""
    events = run_events(
        loadsim,
        "normal",
        "--seed",
        str(SEED_MAX),
        "--iterations",
        str(INT64_MAX),
        "--duration",
        "1s",
        "--clients",
        "2",
        "--database-url",
        database_url,
        "-q",
    )
    start, end = events[0], events[-1]
    assert start["seed"] == SEED_MAX
    assert start["workload"]["iterations"] == INT64_MAX
    assert end["event"] == "run.end"
    assert end["summary"]["stop_reason"] == "duration"
    assert by_name(events, "client.acquired")
