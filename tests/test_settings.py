"""Configuration precedence: flag > environment (.env) > --preset > scenario > the scenario's
preset > default."""

from __future__ import annotations

from pathlib import Path

import pytest

import loadsim
from loadsim.config.scenario import PoolConfig, ScenarioFile, load_scenarios, parse_scenarios
from loadsim.config.settings import (
    ENVIRONMENT_VARIABLES,
    Flags,
    RunConfig,
    read_environment,
    resolve,
)
from loadsim.errors import ScenarioError

SCENARIOS_TOML = """
[presets.small]
pool_size = 2
max_overflow = 7
pool_timeout = "45s"

[presets.big]
pool_size = 50

[scenarios.layered]
preset = "small"
clients = 4
duration = "20s"

[scenarios.layered.pool]
pool_size = 3

[scenarios.preset_only]
preset = "small"

[scenarios.plain]
"""


@pytest.fixture
def scenarios() -> ScenarioFile:
    return parse_scenarios(SCENARIOS_TOML, Path("x.toml"))


def resolve_named(
    scenarios: ScenarioFile,
    name: str,
    environment: dict[str, str] | None = None,
    flags: Flags | None = None,
) -> RunConfig:
    return resolve(scenarios, scenarios.get(name), environment or {}, flags or Flags())


# ------------------------------------------------------------------------- precedence


@pytest.mark.parametrize(
    ("scenario", "environment", "flags", "pool_size", "source"),
    [
        ("layered", {"POOL_SIZE": "4"}, Flags(pool_size=6), 6, "flag"),
        ("layered", {"POOL_SIZE": "4"}, Flags(), 4, "environment"),
        ("layered", {}, Flags(), 3, "scenario"),
        ("preset_only", {}, Flags(), 2, "preset small"),
        ("plain", {}, Flags(), PoolConfig().pool_size, "default"),
        # each layer also wins when the layers above it are the only other ones set
        ("plain", {"POOL_SIZE": "4"}, Flags(pool_size=6), 6, "flag"),
        ("plain", {"POOL_SIZE": "4"}, Flags(), 4, "environment"),
        ("preset_only", {"POOL_SIZE": "4"}, Flags(), 4, "environment"),
    ],
)
def test_pool_size_comes_from_the_highest_layer_that_sets_it(
    scenarios: ScenarioFile,
    scenario: str,
    environment: dict[str, str],
    flags: Flags,
    pool_size: int,
    source: str,
) -> None:
    config = resolve_named(scenarios, scenario, environment, flags)
    assert config.pool.pool_size == pool_size
    assert config.sources["pool_size"] == source


def test_each_setting_records_its_own_source(scenarios: ScenarioFile) -> None:
    config = resolve_named(
        scenarios,
        "layered",
        {"POOL_RECYCLE": "10m"},
        Flags(pool_pre_ping=True, clients=9),
    )
    assert config.pool == PoolConfig(
        pool_size=3,  # scenario
        max_overflow=7,  # preset
        pool_timeout=45.0,  # preset
        pool_recycle=600.0,  # environment
        pool_pre_ping=True,  # flag
    )
    assert config.sources["pool_pre_ping"] == "flag"
    assert config.sources["pool_recycle"] == "environment"
    assert config.sources["pool_size"] == "scenario"
    assert config.sources["max_overflow"] == "preset small"
    assert config.sources["pool_timeout"] == "preset small"
    assert config.sources["pool_use_lifo"] == "default"
    assert config.workload.clients == 9
    assert config.sources["clients"] == "flag"
    assert config.workload.duration == 20.0
    assert config.sources["duration"] == "scenario"
    assert config.sources["hold"] == "default"


def test_preset_flag_outranks_the_scenarios_own_preset(scenarios: ScenarioFile) -> None:
    config = resolve_named(scenarios, "preset_only", flags=Flags(preset="big"))
    assert config.pool.pool_size == 50
    assert config.sources["pool_size"] == "preset big (--preset)"
    # What "big" does not set still comes from the scenario's own preset "small".
    assert (config.pool.max_overflow, config.pool.pool_timeout) == (7, 45.0)
    assert config.sources["max_overflow"] == "preset small"


def test_preset_flag_outranks_the_scenarios_pool_table(scenarios: ScenarioFile) -> None:
    # The user's explicit choice on the command line: `layered` sets pool_size = 3 itself.
    config = resolve_named(scenarios, "layered", flags=Flags(preset="big"))
    assert config.pool.pool_size == 50
    assert config.sources["pool_size"] == "preset big (--preset)"
    assert config.sources["max_overflow"] == "preset small"


def test_preset_flag_stays_below_flags_and_environment(scenarios: ScenarioFile) -> None:
    flagged = resolve_named(scenarios, "layered", flags=Flags(preset="big", pool_size=8))
    assert (flagged.pool.pool_size, flagged.sources["pool_size"]) == (8, "flag")
    environment = resolve_named(scenarios, "layered", {"POOL_SIZE": "4"}, Flags(preset="big"))
    assert (environment.pool.pool_size, environment.sources["pool_size"]) == (4, "environment")


def test_preset_flag_applies_to_a_scenario_without_a_preset(scenarios: ScenarioFile) -> None:
    config = resolve_named(scenarios, "plain", flags=Flags(preset="small"))
    assert (config.pool.pool_size, config.pool.max_overflow) == (2, 7)
    assert config.sources["pool_size"] == "preset small (--preset)"


def test_preset_flag_changes_a_shipped_scenario() -> None:
    """`--preset aggressive` on `exhaustion` (pool 5 + 5, 1 s in its own [pool]) is what the
    README's `compare conservative.jsonl moderate.jsonl aggressive.jsonl` relies on."""
    shipped = load_scenarios(Path(loadsim.__file__).parent / "scenarios.toml")
    config = resolve(shipped, shipped.get("exhaustion"), {}, Flags(preset="aggressive"))
    aggressive = shipped.presets["aggressive"]
    assert config.pool.pool_size == aggressive["pool_size"]
    assert config.pool.max_overflow == aggressive["max_overflow"]
    assert config.sources["pool_timeout"] == "preset aggressive (--preset)"


def test_unknown_preset_flag_is_named(scenarios: ScenarioFile) -> None:
    with pytest.raises(ScenarioError) as caught:
        resolve_named(scenarios, "plain", flags=Flags(preset="smal"))
    message = str(caught.value)
    assert "--preset names an unknown preset 'smal'" in message
    assert "did you mean 'small'?" in message
    assert "known presets: small, big" in message


# ------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    ("variable", "value", "key", "parsed"),
    [
        ("POOL_SIZE", " 8 ", "pool_size", 8),
        ("MAX_OVERFLOW", "-1", "max_overflow", -1),
        ("POOL_TIMEOUT", "1m30s", "pool_timeout", 90.0),
        ("POOL_RECYCLE", "off", "pool_recycle", -1.0),
        ("POOL_RECYCLE", "300", "pool_recycle", 300.0),
        ("POOL_PRE_PING", "yes", "pool_pre_ping", True),
        ("POOL_PRE_PING", "0", "pool_pre_ping", False),
        ("ECHO_POOL", "debug", "echo_pool", "debug"),
    ],
)
def test_environment_values_are_parsed(
    scenarios: ScenarioFile, variable: str, value: str, key: str, parsed: object
) -> None:
    config = resolve_named(scenarios, "plain", {variable: value})
    assert getattr(config.pool, key) == parsed
    assert config.sources[key] == "environment"


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("POOL_SIZE", "abc", "an integer of at least 1"),
        ("POOL_SIZE", "0", "an integer of at least 1"),
        ("POOL_PRE_PING", "maybe", "true or false"),
        ("POOL_TIMEOUT", "soon", "a duration"),
        ("MAX_OVERFLOW", "-5", "or -1 for no limit"),
    ],
)
def test_bad_environment_value_names_the_variable(
    scenarios: ScenarioFile, variable: str, value: str, allowed: str
) -> None:
    with pytest.raises(ScenarioError) as caught:
        resolve_named(scenarios, "plain", {variable: value})
    message = str(caught.value)
    assert message.startswith(f"environment variable {variable}: ")
    assert allowed in message
    assert value in message


# ------------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    ("flags", "option", "allowed"),
    [
        (Flags(pool_timeout="-1s"), "--pool-timeout", "a duration"),
        (Flags(pool_timeout="0"), "--pool-timeout", "greater than zero"),
        (Flags(pool_recycle="0s"), "--pool-recycle", "or -1 to disable"),
        (Flags(pool_size=0), "--pool-size", "an integer of at least 1"),
        (Flags(max_overflow=-2), "--max-overflow", "or -1 for no limit"),
        (Flags(clients=0), "--clients", "an integer of at least 1"),
        (Flags(duration="soon"), "--duration", "a duration"),
        (Flags(iterations=0), "--iterations", "an integer of at least 1"),
    ],
)
def test_bad_flag_value_names_the_option(
    scenarios: ScenarioFile, flags: Flags, option: str, allowed: str
) -> None:
    with pytest.raises(ScenarioError) as caught:
        resolve_named(scenarios, "plain", flags=flags)
    message = str(caught.value)
    assert message.startswith(f"{option}: ")
    assert allowed in message


def test_flag_values_are_parsed(scenarios: ScenarioFile) -> None:
    config = resolve_named(
        scenarios,
        "plain",
        flags=Flags(pool_timeout="2m", pool_recycle="-1", duration="1m30s", seed=42),
    )
    assert config.pool.pool_timeout == 120.0
    assert config.pool.pool_recycle == -1.0
    assert config.workload.duration == 90.0
    assert config.seed == 42
    assert config.sources["seed"] == "flag"
    assert config.sources["duration"] == "flag"


def test_iterations_flag_alone_removes_the_time_limit(scenarios: ScenarioFile) -> None:
    config = resolve_named(scenarios, "layered", flags=Flags(iterations=5))
    assert config.workload.iterations == 5
    assert config.workload.duration is None
    assert config.sources["iterations"] == "flag"


# BUG: with --iterations alone, duration becomes None because of the flag, but `sources` still
# says the scenario's (or the default) value is in force, so `loadsim show layered -n 5` prints
# "duration  -  (scenario)" although the scenario asked for 20s. It should say "flag".
def test_iterations_flag_alone_records_the_flag_as_durations_source(
    scenarios: ScenarioFile,
) -> None:
    config = resolve_named(scenarios, "layered", flags=Flags(iterations=5))
    assert config.workload.duration is None
    assert config.sources["duration"] == "flag"


def test_iterations_flag_with_duration_keeps_the_duration(scenarios: ScenarioFile) -> None:
    config = resolve_named(scenarios, "layered", flags=Flags(iterations=5, duration="3s"))
    assert (config.workload.iterations, config.workload.duration) == (5, 3.0)


def test_without_flags_the_seed_is_unset(scenarios: ScenarioFile) -> None:
    config = resolve_named(scenarios, "plain")
    assert config.seed is None
    assert config.sources["seed"] == "default"
    assert config.scenario == "plain"


# ------------------------------------------------------------------------ DATABASE_URL

FLAG_URL = "postgresql://flag@localhost/db"
ENV_URL = "postgresql://env@localhost/db"


@pytest.mark.parametrize(
    ("environment", "flags", "url", "source"),
    [
        ({"DATABASE_URL": ENV_URL}, Flags(database_url=FLAG_URL), FLAG_URL, "flag"),
        ({"DATABASE_URL": ENV_URL}, Flags(), ENV_URL, "environment"),
        ({}, Flags(database_url=FLAG_URL), FLAG_URL, "flag"),
        ({}, Flags(), None, "default"),
    ],
)
def test_database_url_precedence(
    scenarios: ScenarioFile,
    environment: dict[str, str],
    flags: Flags,
    url: str | None,
    source: str,
) -> None:
    config = resolve_named(scenarios, "plain", environment, flags)
    assert config.database_url == url
    assert config.sources["database_url"] == source


# --------------------------------------------------------------------------- LOG_LEVEL


@pytest.mark.parametrize(
    ("environment", "flags", "level", "source"),
    [
        ({}, Flags(), "info", "default"),
        ({"LOG_LEVEL": "WARNING"}, Flags(), "warning", "environment"),
        ({"LOG_LEVEL": "error"}, Flags(log_level="debug"), "debug", "flag"),
    ],
)
def test_log_level_precedence_and_case(
    scenarios: ScenarioFile,
    environment: dict[str, str],
    flags: Flags,
    level: str,
    source: str,
) -> None:
    config = resolve_named(scenarios, "plain", environment, flags)
    assert config.log_level == level
    assert config.sources["log_level"] == source


def test_bad_log_level_lists_the_valid_ones(scenarios: ScenarioFile) -> None:
    with pytest.raises(ScenarioError) as caught:
        resolve_named(scenarios, "plain", {"LOG_LEVEL": "verbose"})
    message = str(caught.value)
    assert message.startswith("LOG_LEVEL (environment): ")
    assert "expected one of debug, info, warning, error" in message
    assert "'verbose'" in message


# ------------------------------------------------------------------------------ result


def test_run_config_is_frozen_and_its_sources_read_only(scenarios: ScenarioFile) -> None:
    config = resolve_named(scenarios, "plain")
    with pytest.raises(AttributeError):
        config.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.sources["pool_size"] = "flag"  # type: ignore[index]


# -------------------------------------------------------------------- read_environment


def write_dotenv(directory: Path, text: str) -> Path:
    path = directory / ".env"
    path.write_text(text, encoding="utf-8")
    return path


def test_read_environment_reads_a_dotenv_file(tmp_path: Path) -> None:
    dotenv = write_dotenv(
        tmp_path,
        "# local settings\n"
        'DATABASE_URL="postgresql://u:p@db:5432/app"\n'
        "POOL_SIZE=7\n"
        "export LOG_LEVEL=debug\n"
        "UNRELATED=ignored\n",
    )
    assert read_environment(environ={}, dotenv_path=dotenv) == {
        "DATABASE_URL": "postgresql://u:p@db:5432/app",
        "POOL_SIZE": "7",
        "LOG_LEVEL": "debug",
    }


def test_real_environment_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = write_dotenv(tmp_path, "POOL_SIZE=7\nMAX_OVERFLOW=3\n")
    environment = read_environment(environ={"POOL_SIZE": "9"}, dotenv_path=dotenv)
    assert environment == {"POOL_SIZE": "9", "MAX_OVERFLOW": "3"}


def test_read_environment_keeps_only_known_non_blank_variables(tmp_path: Path) -> None:
    environ = {"POOL_TIMEOUT": "  5s ", "ECHO_POOL": "   ", "HOME": "/root", "pool_size": "3"}
    environment = read_environment(environ=environ, dotenv_path=tmp_path / "missing.env")
    assert environment == {"POOL_TIMEOUT": "5s"}
    assert set(environment) <= set(ENVIRONMENT_VARIABLES)


def test_read_environment_defaults_to_dotenv_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_dotenv(tmp_path, "POOL_RECYCLE=off\n")
    monkeypatch.chdir(tmp_path)
    assert read_environment(environ={}) == {"POOL_RECYCLE": "off"}


def test_read_environment_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENVIRONMENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POOL_PRE_PING", "true")
    assert read_environment(dotenv_path=tmp_path / "missing.env") == {"POOL_PRE_PING": "true"}


def test_dotenv_values_flow_through_resolve(tmp_path: Path, scenarios: ScenarioFile) -> None:
    dotenv = write_dotenv(tmp_path, "POOL_SIZE=11\nPOOL_PRE_PING=maybe\n")
    environment = read_environment(environ={"POOL_PRE_PING": "on"}, dotenv_path=dotenv)
    config = resolve_named(scenarios, "layered", environment)
    assert config.pool.pool_size == 11
    assert config.pool.pool_pre_ping is True
    assert config.sources["pool_size"] == "environment"
