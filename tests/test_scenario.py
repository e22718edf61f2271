"""Scenario files: durations, distributions, TOML parsing and the error messages people see."""

from __future__ import annotations

import dataclasses
import random
import textwrap
from pathlib import Path

import pytest

from loadsim.config.scenario import (
    POOL_KEYS,
    Distribution,
    PoolConfig,
    Scenario,
    Workload,
    default_scenario_path,
    load_scenarios,
    merge_session_settings,
    parse_distribution,
    parse_duration,
    parse_scenarios,
)
from loadsim.errors import ScenarioError

REPOSITORY = Path(__file__).resolve().parent.parent
X_TOML = Path("x.toml")


def parse_error(text: str) -> str:
    """The message of the ScenarioError that parsing `text` raises."""
    with pytest.raises(ScenarioError) as caught:
        parse_scenarios(text, X_TOML)
    return str(caught.value)


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5m", 90.0),
        ("1h1m1s", 3661.0),
        ("  2S  ", 2.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("30", 30.0),
        (0, 0.0),
        (3, 3.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "abc",
        "ms",
        "5 parsecs",
        "1m30",
        "30s1",
        "-1",
        "-1s",
        -1,
        -0.5,
        "inf",
        "nan",
        float("inf"),
        True,
        False,
        None,
        [1],
    ],
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


# ----------------------------------------------------------------------- distributions


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("200ms", Distribution("fixed", 0.2)),
        (2, Distribution("fixed", 2.0)),
        ("uniform(10ms, 50ms)", Distribution("uniform", 0.01, 0.05)),
        ("uniform( 1s ,1s )", Distribution("uniform", 1.0, 1.0)),
        ("UNIFORM(1s, 2s)", Distribution("uniform", 1.0, 2.0)),
        ("exp(50ms)", Distribution("exp", 0.05)),
        ("exp(0)", Distribution("exp", 0.0)),
    ],
)
def test_parse_distribution_accepts(value: object, expected: Distribution) -> None:
    parsed = parse_distribution(value)
    assert parsed.kind == expected.kind
    assert parsed.a == pytest.approx(expected.a)
    assert parsed.b == pytest.approx(expected.b)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("uniform(5s, 1s)", "low <= high"),
        ("uniform(1s)", "uniform takes two arguments"),
        ("uniform(1s, 2s, 3s)", "uniform takes two arguments"),
        ("exp()", "expected a duration like"),
        ("exp(1s, 2s)", "exp takes one argument"),
        ("uniform(1s, soon)", "expected a duration like"),
        ("normal(1s)", "expected a duration like"),
        ("uniform(1s, 2s", "expected a duration like"),
        ("garbage", "expected a duration like"),
        ("", "expected a duration like"),
        (True, "expected a duration like"),
    ],
)
def test_parse_distribution_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_distribution(value)


def test_fixed_distribution_always_returns_its_value() -> None:
    fixed = parse_distribution("20ms")
    rng = random.Random(1)
    assert {fixed.sample(rng) for _ in range(20)} == {0.02}
    assert fixed.mean == fixed.maximum == 0.02


def test_uniform_samples_stay_within_bounds_and_spread() -> None:
    uniform = parse_distribution("uniform(10ms, 50ms)")
    rng = random.Random(7)
    samples = [uniform.sample(rng) for _ in range(2000)]
    assert all(0.01 <= sample <= 0.05 for sample in samples)
    assert max(samples) - min(samples) > 0.03  # really spread, not a constant
    assert uniform.mean == pytest.approx(0.03)
    assert uniform.maximum == pytest.approx(0.05)


def test_exp_samples_are_non_negative_with_the_given_mean() -> None:
    exp = parse_distribution("exp(50ms)")
    rng = random.Random(3)
    samples = [exp.sample(rng) for _ in range(5000)]
    assert all(sample >= 0 for sample in samples)
    assert sum(samples) / len(samples) == pytest.approx(0.05, rel=0.1)
    assert exp.mean == pytest.approx(0.05)
    assert exp.maximum == float("inf")


def test_exp_of_zero_always_samples_zero() -> None:
    exp = parse_distribution("exp(0)")
    assert exp.sample(random.Random(0)) == 0.0
    assert exp.maximum == 0.0


@pytest.mark.parametrize("text", ["uniform(10ms, 50ms)", "exp(30ms)"])
def test_same_seed_gives_the_same_sequence(text: str) -> None:
    distribution = parse_distribution(text)
    first, second, other = random.Random(42), random.Random(42), random.Random(43)
    sequence = [distribution.sample(first) for _ in range(50)]
    assert sequence == [distribution.sample(second) for _ in range(50)]
    assert sequence != [distribution.sample(other) for _ in range(50)]


@pytest.mark.parametrize("text", ["250ms", "2s", "uniform(10ms, 50ms)", "exp(30ms)"])
def test_distribution_str_parses_back_to_itself(text: str) -> None:
    distribution = parse_distribution(text)
    assert parse_distribution(str(distribution)) == distribution


# ------------------------------------------------------------------------ TOML parsing

FULL_TOML = """
[presets.small]
pool_size = 2
max_overflow = -1
pool_recycle = "off"

[scenarios.busy]
description = "  Many clients  "
preset = "small"
clients = 12
duration = "1m30s"
ramp_up = "500ms"

[scenarios.busy.pool]
pool_class = "Null"
pool_timeout = "2s"
pool_pre_ping = true
echo_pool = "debug"

[scenarios.busy.workload]
hold = "uniform(10ms, 50ms)"
think = "exp(30ms)"
query = "SELECT 1"

[scenarios.bare]
"""


def test_parse_scenarios_reads_presets_scenarios_and_workloads() -> None:
    loaded = parse_scenarios(FULL_TOML, X_TOML)

    assert loaded.path == X_TOML
    assert list(loaded.scenarios) == ["busy", "bare"]
    assert dict(loaded.presets["small"]) == {
        "pool_size": 2,
        "max_overflow": -1,
        "pool_recycle": -1.0,
    }

    busy = loaded.get("busy")
    assert busy.name == "busy"
    assert busy.description == "Many clients"
    assert busy.preset == "small"
    assert dict(busy.pool) == {
        "pool_class": "null",
        "pool_timeout": 2.0,
        "pool_pre_ping": True,
        "echo_pool": "debug",
    }
    assert busy.workload == Workload(
        clients=12,
        duration=90.0,
        ramp_up=0.5,
        hold=Distribution("uniform", 0.01, 0.05),
        think=Distribution("exp", 0.03),
        query="SELECT 1",
    )
    assert busy.workload_keys == {"clients", "duration", "ramp_up", "hold", "think", "query"}


def test_a_scenario_without_keys_gets_the_defaults() -> None:
    bare = parse_scenarios(FULL_TOML, X_TOML).get("bare")
    assert bare == Scenario(name="bare")
    assert bare.workload == Workload()
    assert bare.workload_keys == frozenset()
    assert dict(bare.pool) == {}


# BUG: `iterations` without `duration` in a scenario file keeps the default duration of 10s, so
# the run is silently cut at 10 seconds. `--iterations` alone sets duration to None ("this many,
# however long it takes", see settings.resolve), and check_workload's message ("set 'duration' or
# 'iterations' so that the run ends") says either one is enough. The file should behave the same.
def test_iterations_alone_in_a_scenario_means_no_time_limit() -> None:
    loaded = parse_scenarios("[scenarios.counted]\niterations = 100\n", X_TOML)
    workload = loaded.get("counted").workload
    assert workload.iterations == 100
    assert workload.duration is None


def test_iterations_with_duration_keeps_both() -> None:
    text = '[scenarios.counted]\niterations = 100\nduration = "5s"\n'
    workload = parse_scenarios(text, X_TOML).get("counted").workload
    assert (workload.iterations, workload.duration) == (100, 5.0)


def test_parsed_objects_are_frozen() -> None:
    loaded = parse_scenarios(FULL_TOML, X_TOML)
    busy = loaded.get("busy")
    frozen_objects: list[tuple[object, str]] = [
        (loaded, "path"),
        (busy, "preset"),
        (busy.workload, "clients"),
        (busy.workload.hold, "a"),
        (PoolConfig(), "pool_size"),
    ]
    for instance, attribute in frozen_objects:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(instance, attribute, None)


def test_parsed_mappings_are_read_only() -> None:
    loaded = parse_scenarios(FULL_TOML, X_TOML)
    with pytest.raises(TypeError):
        loaded.get("busy").pool["pool_size"] = 99  # type: ignore[index]
    with pytest.raises(TypeError):
        loaded.presets["small"]["pool_size"] = 99  # type: ignore[index]
    with pytest.raises(TypeError):
        loaded.scenarios["other"] = Scenario(name="other")  # type: ignore[index]


@pytest.mark.parametrize(
    ("key", "value", "parsed"),
    [
        ("pool_size", '"7"', 7),
        ("max_overflow", "-1", -1),
        ("pool_timeout", "1.5", 1.5),
        ("pool_recycle", "-1", -1.0),
        ("pool_recycle", '"1h"', 3600.0),
        ("pool_pre_ping", '"yes"', True),
        ("pool_use_lifo", "false", False),
        ("pool_reset_on_return", '"COMMIT"', "commit"),
        ("echo_pool", "true", True),
    ],
)
def test_pool_values_are_parsed(key: str, value: str, parsed: object) -> None:
    loaded = parse_scenarios(f"[scenarios.s.pool]\n{key} = {value}\n", X_TOML)
    assert loaded.get("s").pool[key] == parsed


# ------------------------------------------------------------------ validation messages


def test_malformed_toml_names_the_file_line_and_column() -> None:
    message = parse_error('[scenarios.a]\nclients = 3\nduration "10s"\n')
    assert message.startswith("x.toml: malformed TOML")
    assert "line 3" in message
    assert "column" in message


@pytest.mark.parametrize(
    ("text", "where", "key", "suggestion"),
    [
        ("[scenarios.a.pool]\npool_sise = 5\n", "scenario 'a' [pool]", "pool_sise", "pool_size"),
        ("[presets.p]\nmax_overflw = 5\n", "[presets.p]", "max_overflw", "max_overflow"),
        ("[scenarios.a]\nclient = 3\n", "scenario 'a'", "client", "clients"),
        ('[scenarios.a.workload]\nhld = "1s"\n', "scenario 'a' [workload]", "hld", "hold"),
        ("[scenario.a]\nclients = 3\n", "at the top level", "scenario", "scenarios"),
    ],
)
def test_unknown_key_is_named_with_the_nearest_valid_one(
    text: str, where: str, key: str, suggestion: str
) -> None:
    message = parse_error(text)
    assert message.startswith("x.toml:")
    assert where in message
    assert f"unknown key {key!r}" in message
    assert f"did you mean {suggestion!r}?" in message
    assert "valid keys:" in message


def test_unknown_key_without_a_close_match_lists_the_valid_keys() -> None:
    message = parse_error("[scenarios.a.pool]\nzzz = 1\n")
    assert "unknown key 'zzz'" in message
    assert "did you mean" not in message
    assert f"valid keys: {', '.join(POOL_KEYS)}" in message


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ("[scenarios.a.pool]\npool_size = 0\n", "pool_size", "an integer of at least 1, got 0"),
        ("[scenarios.a.pool]\npool_size = 2.5\n", "pool_size", "an integer of at least 1"),
        ('[scenarios.a.pool]\npool_size = "five"\n', "pool_size", "an integer of at least 1"),
        ("[scenarios.a.pool]\npool_size = true\n", "pool_size", "an integer of at least 1"),
        ("[scenarios.a.pool]\nmax_overflow = -2\n", "max_overflow", "or -1 for no limit"),
        ("[scenarios.a]\nclients = 0\n", "clients", "an integer of at least 1, got 0"),
        ("[scenarios.a]\niterations = 0\n", "iterations", "an integer of at least 1, got 0"),
        ("[scenarios.a.pool]\npool_timeout = 0\n", "pool_timeout", "greater than zero"),
        ('[scenarios.a]\nduration = "0s"\n', "duration", "greater than zero"),
        ('[scenarios.a]\nduration = "1m30"\n', "duration", "such as '250ms'"),
        ("[scenarios.a.pool]\npool_recycle = 0\n", "pool_recycle", "or -1 to disable"),
        ('[scenarios.a.pool]\npool_class = "lifo"\n', "pool_class", "one of queue, null"),
        ('[scenarios.a.pool]\npool_pre_ping = "maybe"\n', "pool_pre_ping", "true or false"),
        (
            '[scenarios.a.pool]\npool_reset_on_return = "drop"\n',
            "pool_reset_on_return",
            "one of rollback, commit, none",
        ),
        ('[scenarios.a.workload]\nhold = "uniform(5s, 1s)"\n', "hold", "low <= high"),
        ('[scenarios.a.workload]\nquery = ""\n', "query", "an SQL statement"),
    ],
)
def test_invalid_value_says_what_is_allowed(text: str, key: str, allowed: str) -> None:
    message = parse_error(text)
    assert message.startswith("x.toml: ")
    assert f"key {key!r}: " in message
    assert allowed in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[scenarios.a]\ndescription = 3\n", "key 'description': expected a string"),
        ("[scenarios.a]\npreset = 3\n", "key 'preset': expected a preset's name"),
        ("scenarios = 3\n", "[scenarios]: expected a table"),
        ("[scenarios.a]\npool = 3\n", "scenario 'a' [pool]: expected a table"),
        ("[presets]\np = 3\n", "[presets.p]: expected a table"),
    ],
)
def test_wrong_shapes_are_reported(text: str, message: str) -> None:
    assert message in parse_error(text)


def test_unknown_preset_is_named_with_known_ones() -> None:
    text = '[presets.moderate]\npool_size = 10\n\n[scenarios.a]\npreset = "moderat"\n'
    message = parse_error(text)
    assert "scenario 'a' names an unknown preset 'moderat'" in message
    assert "did you mean 'moderate'?" in message
    assert "known presets: moderate" in message


def test_get_on_an_unknown_scenario_lists_the_known_ones() -> None:
    loaded = parse_scenarios(FULL_TOML, X_TOML)
    with pytest.raises(ScenarioError) as caught:
        loaded.get("bussy")
    message = str(caught.value)
    assert message.startswith("x.toml: no scenario named 'bussy'")
    assert "did you mean 'busy'?" in message
    assert "known scenarios: busy, bare" in message


def test_get_on_an_empty_file_says_there_are_none() -> None:
    with pytest.raises(ScenarioError, match=r"known scenarios: \(none\)"):
        parse_scenarios("", X_TOML).get("normal")


def test_load_scenarios_reports_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenarios(missing)


# ----------------------------------------------------------------- the shipped scenarios

SHIPPED_PRESETS = {
    "conservative": {"pool_size": 5, "max_overflow": 5, "pool_timeout": 30, "pool_recycle": 3600},
    "moderate": {"pool_size": 10, "max_overflow": 20, "pool_timeout": 60, "pool_recycle": 1800},
    "aggressive": {"pool_size": 20, "max_overflow": 30, "pool_timeout": 120, "pool_recycle": 900},
}


@pytest.fixture(params=["repository", "packaged"])
def shipped_path(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    if request.param == "repository":
        return REPOSITORY / "scenarios.toml"
    monkeypatch.chdir(tmp_path)  # no ./scenarios.toml here: the packaged file is the default
    path = default_scenario_path()
    assert path.parent.name == "loadsim"
    return path


def test_shipped_scenarios_load_with_the_documented_presets(shipped_path: Path) -> None:
    loaded = load_scenarios(shipped_path)
    assert {name: dict(preset) for name, preset in loaded.presets.items()} == SHIPPED_PRESETS

    normal = loaded.get("normal")
    assert normal.pool["pool_size"] == 5
    assert normal.workload.clients == 3
    assert {"normal", "saturation", "exhaustion"} <= set(loaded.scenarios)


def test_default_scenario_path_prefers_a_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "scenarios.toml"
    local.write_text("[scenarios.only_here]\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert default_scenario_path() == local
    assert list(load_scenarios().scenarios) == ["only_here"]


# ----------------------------------------------------------- session settings, deadline


def test_session_settings_are_read_as_postgresql_takes_them() -> None:
    """[session]: any session GUC, values as strings (durations PostgreSQL's way), numbers
    or booleans, sent as text; names folded to lower case as the server does, dotted ones
    (an extension's, the application's own) allowed."""
    scenario = parse_scenarios(
        textwrap.dedent("""
        [scenarios.a.session]
        statement_timeout = "250ms"
        Lock_Timeout = 100
        "pg_stat_statements.track" = "all"
        jit = false
        random_page_cost = 1.5
        """),
        X_TOML,
    ).get("a")
    assert dict(scenario.session) == {
        "statement_timeout": "250ms",
        "lock_timeout": "100",
        "pg_stat_statements.track": "all",
        "jit": "off",
        "random_page_cost": "1.5",
    }
    assert parse_scenarios("[scenarios.b]\n", X_TOML).get("b").session == {}


def test_session_settings_and_the_faults_idle_timeouts_are_one_set() -> None:
    """The faults' idle timeouts (in ms) and the [session] table, merged: what every
    session of the pool is opened with."""
    text = (
        '[scenarios.a.faults]\nidle_session_timeout = "2s"\n'
        '[scenarios.a.session]\nstatement_timeout = "1s"\n'
    )
    scenario = parse_scenarios(text, X_TOML).get("a")
    assert merge_session_settings(scenario.session, scenario.faults) == {
        "idle_session_timeout": "2000",
        "statement_timeout": "1s",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[scenarios.a.session]\n"statement timeout" = "1s"\n',
            "scenario 'a' [session]: 'statement timeout' is not a server setting's name",
        ),
        (
            '[scenarios.a.session]\n"a..b" = "1"\n',
            "'a..b' is not a server setting's name",
        ),
        (
            '[scenarios.a.session]\n"1abc" = "1"\n',
            "'1abc' is not a server setting's name",
        ),
        (
            '[scenarios.a.session]\napplication_name = "mine"\n',
            "key 'application_name' is loadsim's own",
        ),
        (
            '[scenarios.a.session]\nstatement_timeout = ["1s"]\n',
            "key 'statement_timeout': expected a value as PostgreSQL takes it",
        ),
        (
            "[scenarios.a.session]\nstatement_timeout = { ms = 1 }\n",
            "key 'statement_timeout': expected a value as PostgreSQL takes it",
        ),
        (
            "[scenarios.a.session]\nstatement_timeout = nan\n",
            "key 'statement_timeout': expected a finite number",
        ),
        (
            '[scenarios.a.session]\nStatement_Timeout = "1s"\nstatement_timeout = "2s"\n',
            "setting 'statement_timeout' is given twice",
        ),
        ("[scenarios.a]\nsession = 3\n", "scenario 'a' [session]: expected a table"),
        (
            '[scenarios.a.faults]\nidle_session_timeout = "2s"\n'
            '[scenarios.a.session]\nidle_session_timeout = "3s"\n',
            "idle_session_timeout is set in [faults] and in [session]: keep one of them",
        ),
        (
            '[scenarios.a.workload]\ndeadline = "0s"\n',
            "key 'deadline': expected a duration greater than zero",
        ),
        (
            '[scenarios.a.workload]\ndeadline = "2h"\n',
            "key 'deadline': expected from 1ms to 3600s",
        ),
        (
            '[[scenarios.a.groups]]\nname = "x"\nbehaviour = "leak"\ndeadline = "1s"\n',
            "key 'deadline' is for 'loop' clients",
        ),
    ],
)
def test_bad_session_settings_and_deadlines_are_named(text: str, message: str) -> None:
    error = parse_error(text)
    assert error.startswith("x.toml: ")
    assert message in error


def test_a_deadline_reaches_the_clients_of_its_workload_and_groups() -> None:
    text = (
        '[scenarios.a.workload]\ndeadline = "250ms"\n'
        '[[scenarios.a.groups]]\nname = "g"\ndeadline = "1s"\n'
    )
    scenario = parse_scenarios(text, X_TOML).get("a")
    assert scenario.workload.deadline == 0.25
    assert scenario.workload.main_group().deadline == 0.25
    assert scenario.groups[0].deadline == 1.0
    assert parse_scenarios("[scenarios.b]\n", X_TOML).get("b").workload.deadline is None
