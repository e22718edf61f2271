"""`--ramp-up` and `--rate` on `run` (and `show`): their precedence (flag > scenario >
default; no environment variable), their bounds, where `show` says they came from, and what
a run does with them: clients started evenly over the ramp-up, requests arriving at the rate
whatever the scenario was."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadsim.config.scenario import Arrivals, Stage, parse_scenarios
from loadsim.config.settings import Flags, RunConfig, resolve
from loadsim.errors import ScenarioError
from tests.helpers import RunLoadsim, assert_user_error, by_name, run_events, write_scenarios

SCENARIOS = """
[scenarios.closed]
clients = 4
duration = "3s"
ramp_up = "1s"
pool = { pool_size = 5, max_overflow = 0 }
workload = { hold = "5ms", think = "20ms" }

[scenarios.open]
duration = "3s"
pool = { pool_size = 5, max_overflow = 0 }
workload = { hold = "5ms" }

[scenarios.open.arrivals]
rate = 40
max_in_flight = 50
stages = [{ duration = "1s", target = 80 }]
"""


def resolved(name: str, flags: Flags, environment: dict[str, str] | None = None) -> RunConfig:
    scenarios = parse_scenarios(SCENARIOS, Path("x.toml"))
    return resolve(scenarios, scenarios.get(name), environment or {}, flags)


def test_ramp_up_flag_outranks_the_scenario_and_no_variable_sets_it() -> None:
    assert resolved("closed", Flags()).workload.ramp_up == 1.0
    assert resolved("closed", Flags()).sources["ramp_up"] == "scenario"
    config = resolved("closed", Flags(ramp_up="250ms"), {"RAMP_UP": "9s", "RATE": "5"})
    assert config.workload.ramp_up == 0.25 and config.sources["ramp_up"] == "flag"
    assert config.arrivals is None  # RATE in the environment is nothing to loadsim
    assert resolved("open", Flags()).sources["ramp_up"] == "default"


def test_rate_makes_a_closed_scenario_open_at_that_constant_rate() -> None:
    config = resolved("closed", Flags(rate=25.0, ramp_up="0s"))
    assert config.arrivals == Arrivals(rate=25.0)
    assert config.sources["arrivals.rate"] == "flag"
    assert config.sources["arrivals.max_in_flight"] == "default (open by --rate)"
    assert config.groups_with_main == ()  # the main clients are now the requests


def test_rate_replaces_an_open_scenarios_rate_and_stages() -> None:
    config = resolved("open", Flags(rate=10.0))
    assert config.arrivals == Arrivals(rate=10.0, max_in_flight=50)
    assert config.sources["arrivals.max_in_flight"] == "scenario"


def test_a_ramp_up_on_an_open_workload_climbs_from_zero_to_the_rate_first() -> None:
    config = resolved("open", Flags(ramp_up="500ms"))
    assert config.arrivals is not None
    assert config.arrivals.rate == 0.0
    assert config.arrivals.stages == (Stage(0.5, 40.0), Stage(1.0, 80.0))
    # requests due: the ramp's triangle (10), the first stage's trapezoid (60), then 80/s
    assert config.arrivals.expected(0.0, 3.0) == pytest.approx(10 + 60 + 1.5 * 80)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (Flags(rate=-1.0), "--rate: expected a rate of at least 0"),
        (Flags(rate=200_000.0), "--rate: expected at most 100,000 requests per second"),
        (Flags(rate=float("nan")), "--rate: expected a number of requests per second"),
        (Flags(ramp_up="soon"), "--ramp-up: expected a duration"),
        (Flags(rate=5.0, ramp_up="4s"), "--ramp-up: the ramp-up (4s) is longer than the run (3s)"),
        (Flags(ramp_up="3.5s"), "--ramp-up: the ramp-up (3.5s) is longer than the run"),
        (Flags(ramp_up="2s", duration="1s"), "--ramp-up: the ramp-up (2s) is longer than the run"),
        (Flags(rate=5.0, iterations=3), "--rate: an open workload runs for a duration"),
        (Flags(rate=0.0), "the rate is 0 for the whole duration"),
    ],
)
def test_bad_values_are_refused_with_the_flag_named(flags: Flags, message: str) -> None:
    with pytest.raises(ScenarioError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolved("closed", flags)


def test_bad_values_are_one_line_errors_on_the_command_line(
    loadsim: RunLoadsim, tmp_path: Path
) -> None:
    file = str(write_scenarios(tmp_path, SCENARIOS))
    assert_user_error(loadsim("run", "closed", "-f", file, "--rate", "lots"), 2, "--rate")
    assert_user_error(loadsim("run", "closed", "-f", file, "--rate", "inf"), 2, "--rate")
    assert_user_error(loadsim("show", "closed", "-f", file, "--ramp-up", "-2s"), 2, "--ramp-up")


def test_show_says_where_the_ramp_up_and_the_rate_came_from(
    loadsim: RunLoadsim, tmp_path: Path
) -> None:
    file = str(write_scenarios(tmp_path, SCENARIOS))
    shown = loadsim("show", "closed", "-f", file, "--rate", "30")
    assert shown.returncode == 0, shown.stderr
    rows = _rows(shown.stdout)
    assert rows["ramp_up"] == "1s  (scenario)"
    assert rows["arrivals.rate"] == "0.0  (ramp_up scenario)"
    assert rows["arrivals.stages[0]"] == "duration 1s, target 30/s  (flag, ramp_up scenario)"
    assert rows["arrivals.max_in_flight"] == "1000  (default (open by --rate))"
    shown = loadsim("show", "open", "-f", file, "--rate", "30")
    rows = _rows(shown.stdout)
    assert rows["arrivals.rate"] == "30.0  (flag)"
    assert rows["arrivals.stages"] == "- (a constant rate)  (flag)"


def _rows(text: str) -> dict[str, str]:
    """show's output (after the file's path) as key -> the rest of the line."""
    rows = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition("  ")
        rows[key] = rest.strip()
    return rows


# ------------------------------------------------------------ against a server


def test_rate_on_a_closed_scenario_runs_an_open_workload_at_that_rate(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    file = str(write_scenarios(tmp_path, SCENARIOS))
    events = run_events(
        loadsim, "closed", "-f", file, "--rate", "100", "--ramp-up", "0s", "-d", "2s",
        "--database-url", database_url, "-q",
    )  # fmt: skip
    assert events[0]["arrivals"]["rate"] == 100.0
    assert events[0]["sources"]["arrivals.rate"] == "flag"
    summary = by_name(events, "run.end")[0]["summary"]
    # 100/s for 2 s, evenly spaced from t = 0: 200 due, whatever the 4 closed clients did.
    assert summary["requests"] == pytest.approx(200, rel=0.03)
    assert summary["checkouts"] == len(by_name(events, "client.acquired"))
    assert summary["checkouts"] >= 0.97 * summary["requests"]


def test_ramp_up_flag_starts_the_clients_evenly_over_it(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    file = str(write_scenarios(tmp_path, SCENARIOS))
    events = run_events(
        loadsim, "closed", "-f", file, "--ramp-up", "2s", "-d", "3s",
        "--database-url", database_url, "-q",
    )  # fmt: skip
    assert events[0]["workload"]["ramp_up_s"] == 2.0
    first_ask: dict[int, float] = {}
    for event in by_name(events, "client.acquired"):  # asked the pool at t - wait_ms
        first_ask.setdefault(event["client"], event["t"] - event["wait_ms"] / 1000 - events[0]["t"])
    starts = [first_ask[client] for client in sorted(first_ask)]
    # 4 clients over 2 s: one every 0.5 s (plus a first think of at most a few ms).
    assert len(starts) == 4
    for index, start in enumerate(starts):
        assert start == pytest.approx(index * 0.5, abs=0.15), starts
