"""`loadsim show`: every value `RunConfig` holds, and where it came from.

The expected rows are derived from `RunConfig` itself (every field of it and of every
dataclass in it), not from show's own code: a setting added to a dataclass and not printed
fails here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from loadsim.config.scenario import format_duration, load_scenarios, parse_scenarios
from loadsim.config.settings import Flags, RunConfig, resolve
from loadsim.config.show import format_show
from tests.helpers import RunLoadsim, write_scenarios

EVERYTHING_TOML = """
[presets.base]
pool_size = 4
pool_timeout = "3s"

[scenarios.everything]
description = "every kind of setting"
preset = "base"
duration = "30s"
pool = { max_overflow = 0 }
workload = { hold = "20ms", deadline = "1s" }
thresholds = ["timeouts == 0", "wait_time_p99_ms < 250"]

[scenarios.everything.arrivals]
rate = 50
distribution = "poisson"
max_in_flight = 200
stages = [{ duration = "10s", target = 400 }, { duration = "20s", target = 300 }]

[scenarios.everything.monitor]
interval = "500ms"
leak_threshold = "7s"
leak_reclaim = "11s"

[scenarios.everything.faults]
terminate = ["4s"]
terminate_which = "idle"
idle_session_timeout = "2m"

[scenarios.everything.session]
statement_timeout = "250ms"
lock_timeout = 100

[[scenarios.everything.groups]]
name = "forgetful"
behaviour = "leak"
clients = 2
start = "5s"
hold = "forever"
"""


def rows(text: str) -> dict[str, str]:
    """show's output as key → the rest of the line."""
    table: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#"):  # the scenario file's path, when printed
            continue
        key, _, rest = line.partition("  ")
        assert key not in table, f"{key!r} shown twice"
        table[key] = rest.strip()
    return table


def expected_keys(config: RunConfig) -> set[str]:
    """A row for every field of RunConfig and of each dataclass in it: the pool's and the
    workload's by their own names (as flags and sources name them), the others prefixed."""
    keys: set[str] = set()
    for spec in dataclasses.fields(config):
        value: Any = getattr(config, spec.name)
        if spec.name == "sources":
            keys.update(value)  # every recorded source has its row
        elif spec.name in ("pool", "workload"):
            keys.update(field.name for field in dataclasses.fields(value))
        elif spec.name == "session":  # every setting our sessions get, [faults]' too
            keys.update(f"session.{name}" for name in config.session_settings)
            if not config.session_settings:
                keys.add("session")
        elif spec.name == "groups":
            keys.update(
                f"groups.{group.name}.{field.name}"
                for group in value
                for field in dataclasses.fields(group)
            )
            if not value:
                keys.add("groups")
        elif spec.name == "arrivals" and value is not None:
            for field in dataclasses.fields(value):
                if field.name == "stages":
                    keys.update(f"arrivals.stages[{index}]" for index in range(len(value.stages)))
                else:
                    keys.add(f"arrivals.{field.name}")
        elif dataclasses.is_dataclass(value):
            keys.update(f"{spec.name}.{field.name}" for field in dataclasses.fields(value))
        else:
            keys.add(spec.name)
    return keys


def test_every_field_of_every_dataclass_is_shown() -> None:
    scenarios = parse_scenarios(EVERYTHING_TOML, Path("x.toml"))
    config = resolve(scenarios, scenarios.get("everything"), {}, Flags(thresholds=("errors == 0",)))
    shown = rows(format_show(config))
    missing = expected_keys(config) - set(shown)
    assert not missing, f"loadsim show leaves out {sorted(missing)}"
    # ... with the values RunConfig holds, and where they came from
    assert shown["monitor.leak_threshold"] == "7s  (scenario)"
    assert shown["monitor.leak_reclaim"] == "11s  (scenario)"
    assert shown["monitor.interval"] == "500ms  (scenario)"
    assert shown["faults.terminate"] == "4s  (scenario)"
    assert shown["faults.terminate_which"] == "idle  (scenario)"
    assert shown["faults.idle_session_timeout"] == "120s  (scenario)"
    assert shown["faults.restart"] == "-  (default)"
    assert shown["deadline"] == "1s  (scenario)"
    # the server settings of our sessions: the [session] table and the faults' idle timeout
    assert shown["session.statement_timeout"] == "250ms  (scenario)"
    assert shown["session.lock_timeout"] == "100  (scenario)"
    assert shown["session.idle_session_timeout"] == ("120000  (faults.idle_session_timeout, in ms)")
    assert shown["arrivals.rate"].startswith("50")
    assert shown["arrivals.distribution"] == "poisson  (scenario)"
    assert shown["arrivals.max_in_flight"] == "200  (scenario)"
    assert "duration 10s" in shown["arrivals.stages[0]"]
    assert "target 300" in shown["arrivals.stages[1]"]
    assert shown["groups.forgetful.hold"] == "forever  (scenario)"
    assert shown["groups.forgetful.clients"] == "2  (scenario)"
    assert shown["groups.forgetful.think"] == "0s  (default)"
    for threshold in config.thresholds:
        assert threshold.expression in shown["thresholds"]
    for key, source in config.sources.items():
        assert shown[key].endswith(f"({source})"), (key, shown[key], source)
    assert shown["pool_size"] == "4  (preset base)"


@pytest.mark.parametrize(
    "name",
    [
        "normal",
        "exhaustion",
        "leak",
        "recycle",
        "pre-ping",
        "long-transactions",
        "statement-timeout",
        "client-deadline",
    ],
)
def test_every_shipped_scenario_is_shown_whole(name: str) -> None:
    shipped = load_scenarios(Path(__file__).parents[1] / "loadsim" / "scenarios.toml")
    config = resolve(shipped, shipped.get(name), {}, Flags())
    shown = rows(format_show(config))
    assert not expected_keys(config) - set(shown)
    if config.monitor.leak_threshold is not None:
        expected = format_duration(config.monitor.leak_threshold)
        assert shown["monitor.leak_threshold"] == f"{expected}  (scenario)"


def test_show_names_a_preset_given_on_the_command_line(loadsim: RunLoadsim) -> None:
    """`--preset` outranks the scenario's own [pool] (exhaustion: pool 5 + 5, 1 s)."""
    result = loadsim("show", "exhaustion", "--preset", "aggressive")
    assert result.returncode == 0, result.stderr
    shown = rows(result.stdout)
    assert shown["pool_size"] == "20  (preset aggressive (--preset))"
    assert shown["max_overflow"] == "30  (preset aggressive (--preset))"
    assert shown["pool_timeout"] == "120s  (preset aggressive (--preset))"
    plain = rows(loadsim("show", "exhaustion").stdout)
    assert plain["pool_size"] == "5  (scenario)"


def test_show_prints_the_monitor_of_a_file(loadsim: RunLoadsim, tmp_path: Path) -> None:
    write_scenarios(tmp_path, EVERYTHING_TOML)
    result = loadsim("show", "everything")
    assert result.returncode == 0, result.stderr
    shown = rows(result.stdout)
    assert shown["monitor.leak_threshold"] == "7s  (scenario)"
    assert shown["monitor.leak_reclaim"] == "11s  (scenario)"


def test_show_prints_the_session_settings_and_the_deadline(loadsim: RunLoadsim) -> None:
    """The server settings our sessions get, where each came from: statement-timeout's
    [session] table, recycle's [faults] idle timeout (as sent: in ms); none for the others.
    client-deadline's deadline is the workload's."""
    timeout = rows(loadsim("show", "statement-timeout").stdout)
    assert timeout["session.statement_timeout"] == "200ms  (scenario)"
    assert timeout["deadline"] == "-  (default)"
    recycle = rows(loadsim("show", "recycle").stdout)
    assert recycle["session.idle_session_timeout"] == "2000  (faults.idle_session_timeout, in ms)"
    deadline = rows(loadsim("show", "client-deadline").stdout)
    assert deadline["deadline"] == "200ms  (scenario)"
    assert deadline["session"] == "- (the server's own settings)  (default)"
