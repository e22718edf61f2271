"""Every user-error path of the real `loadsim` command, run as a subprocess.

A user error is exit 2 (ScenarioError) or 3 (DatabaseUnavailable), one line on stderr that
starts with "loadsim: error:" and says what is wrong, no traceback, and nothing on stdout (the
event stream). Passwords never appear in anything loadsim prints.
"""

from __future__ import annotations

import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.helpers import REPOSITORY, RunLoadsim, assert_user_error, write_scenarios

SCENARIO_ERROR = 2
DATABASE_UNAVAILABLE = 3

SECRET = "s3cretpw"
#: Nothing listens on port 1: connecting fails at once with exit 3. Commands that must fail
#: with exit 2 before anything connects use it, so that a wrong ordering shows as exit 3 (and
#: no embedded PostgreSQL is started by accident).
UNREACHABLE_URL = f"postgresql://someone:{SECRET}@127.0.0.1:1/db"


# --------------------------------------------------------------------------- helpers


def assert_hidden(result: subprocess.CompletedProcess[str], secret: str = SECRET) -> None:
    assert secret not in result.stdout, result.stdout
    assert secret not in result.stderr, result.stderr


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    report = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.returncode == 0, report
    assert "Traceback" not in result.stderr, report


def scenario_text(*, scenario: str = "", pool: str = "") -> str:
    """A valid one-scenario file (`x`), with extra lines in the scenario and its [pool]."""
    return (
        "[presets.small]\n"
        "pool_size = 2\n"
        "\n"
        "[scenarios.x]\n"
        'description = "a test scenario"\n'
        'duration = "1s"\n'
        f"{scenario}\n"
        "\n"
        "[scenarios.x.pool]\n"
        "pool_pre_ping = true\n"
        f"{pool}\n"
    )


def run_offline(loadsim: RunLoadsim, *arguments: str) -> subprocess.CompletedProcess[str]:
    """`loadsim run ARGS` against a server that is not there (exit 3 if it ever connects)."""
    return loadsim("run", *arguments, "--database-url", UNREACHABLE_URL, timeout=30)


# ------------------------------------------------------------------- scenario names


def test_unknown_scenario_lists_the_known_ones(loadsim: RunLoadsim) -> None:
    result = run_offline(loadsim, "nosuch")
    assert_user_error(result, SCENARIO_ERROR, "'nosuch'", "normal", "saturation", "exhaustion")


# ------------------------------------------------------------------- scenario files


def test_malformed_toml_names_file_line_and_column(loadsim: RunLoadsim, tmp_path: Path) -> None:
    write_scenarios(
        tmp_path, '[scenarios.x]\nclients = 3\nduration = "1s"\npool_size 5\n', name="bad.toml"
    )
    result = run_offline(loadsim, "x", "--file", "bad.toml")
    assert_user_error(result, SCENARIO_ERROR, "bad.toml", "malformed TOML", "line 4", "column")


def test_unknown_key_suggests_the_right_one(loadsim: RunLoadsim, tmp_path: Path) -> None:
    path = write_scenarios(tmp_path, scenario_text(pool="pool_sise = 5"))
    result = run_offline(loadsim, "x", "--file", str(path))
    assert_user_error(result, SCENARIO_ERROR, str(path), "'pool_sise'", "did you mean 'pool_size'")


@pytest.mark.parametrize(
    ("scenario", "pool", "details"),
    [
        pytest.param("", "pool_size = 0", ("'pool_size'", "at least 1", "got 0"), id="pool_size"),
        pytest.param("clients = 0", "", ("'clients'", "at least 1", "got 0"), id="clients"),
        pytest.param(
            "",
            "max_overflow = -2",
            ("'max_overflow'", "-1 for no limit", "got -2"),
            id="max_overflow",
        ),
        pytest.param(
            "", "pool_timeout = 0", ("'pool_timeout'", "greater than zero"), id="pool_timeout"
        ),
    ],
)
def test_impossible_value_in_file_says_what_is_allowed(
    loadsim: RunLoadsim, tmp_path: Path, scenario: str, pool: str, details: tuple[str, ...]
) -> None:
    path = write_scenarios(tmp_path, scenario_text(scenario=scenario, pool=pool))
    result = run_offline(loadsim, "x", "--file", str(path))
    assert_user_error(result, SCENARIO_ERROR, str(path), "scenario 'x'", *details)


@pytest.mark.parametrize(
    ("arguments", "details"),
    [
        pytest.param(("--pool-size", "0"), ("--pool-size", "at least 1", "got 0"), id="pool-size"),
        pytest.param(
            ("--duration", "banana"),
            ("--duration", "'banana'", "'250ms'", "'1m30s'"),
            id="duration",
        ),
    ],
)
def test_impossible_flag_value_says_what_is_allowed(
    loadsim: RunLoadsim, arguments: tuple[str, ...], details: tuple[str, ...]
) -> None:
    result = run_offline(loadsim, *arguments)
    assert_user_error(result, SCENARIO_ERROR, *details)


def test_unknown_preset_in_file(loadsim: RunLoadsim, tmp_path: Path) -> None:
    path = write_scenarios(tmp_path, scenario_text(scenario='preset = "nosuch"'))
    result = run_offline(loadsim, "x", "--file", str(path))
    assert_user_error(
        result, SCENARIO_ERROR, str(path), "scenario 'x'", "unknown preset 'nosuch'", "small"
    )


def test_unknown_preset_flag(loadsim: RunLoadsim) -> None:
    result = run_offline(loadsim, "--preset", "nosuch")
    assert_user_error(
        result, SCENARIO_ERROR, "--preset", "unknown preset 'nosuch'", "conservative", "moderate"
    )


def test_missing_scenario_file(loadsim: RunLoadsim) -> None:
    result = run_offline(loadsim, "--file", "missing.toml")
    assert_user_error(result, SCENARIO_ERROR, "missing.toml", "no such scenario file")


# ------------------------------------------------------------------- database URLs


def test_unparseable_database_url(loadsim: RunLoadsim) -> None:
    """Said, not repeated: in a URL that cannot be parsed, nobody knows where a password is."""
    result = loadsim("run", "--database-url", "not a url", timeout=30)
    line = assert_user_error(
        result, SCENARIO_ERROR, "cannot parse", "postgresql://user:password@host:port/database"
    )
    assert "not a url" not in line


def test_unsupported_database_driver(loadsim: RunLoadsim) -> None:
    result = loadsim("run", "--database-url", f"mysql://u:{SECRET}@localhost/db", timeout=30)
    assert_user_error(result, SCENARIO_ERROR, "'mysql'", "postgresql://")
    assert_hidden(result)


# ------------------------------------------------------------------------- --output


def test_output_never_overwrites_without_force(loadsim: RunLoadsim, tmp_path: Path) -> None:
    existing = tmp_path / "events.jsonl"
    existing.write_text("precious\n", encoding="utf-8")
    result = run_offline(loadsim, "--output", str(existing))
    # 2, not 3: --output is checked before anything connects.
    assert_user_error(result, SCENARIO_ERROR, "--output", str(existing), "exists", "--force")
    assert existing.read_text(encoding="utf-8") == "precious\n"
    assert_hidden(result)


def test_output_into_a_missing_directory(loadsim: RunLoadsim, tmp_path: Path) -> None:
    target = tmp_path / "no_such_directory" / "events.jsonl"
    result = run_offline(loadsim, "--output", str(target))
    # 2, not 3: --output is checked before anything connects.
    assert_user_error(result, SCENARIO_ERROR, "--output", str(target), "cannot write")
    assert not target.parent.exists()
    assert_hidden(result)


# ------------------------------------------------------------------ the server itself


def test_unreachable_server_fails_fast_and_masks_the_password(loadsim: RunLoadsim) -> None:
    started = time.monotonic()
    result = loadsim("run", "--database-url", UNREACHABLE_URL, timeout=30)
    elapsed = time.monotonic() - started
    assert_user_error(result, DATABASE_UNAVAILABLE, "cannot reach", "127.0.0.1", "someone:***@")
    assert_hidden(result)
    assert elapsed < 8, f"took {elapsed:.1f}s to give up on a closed port"


def test_role_that_does_not_exist_is_refused(loadsim: RunLoadsim, database_url: str) -> None:
    url = make_url(database_url).set(username="no_such_role_xyz", password=SECRET)
    result = loadsim("run", "--database-url", url.render_as_string(hide_password=False), timeout=60)
    assert_user_error(result, DATABASE_UNAVAILABLE, "refused us", "no_such_role_xyz")
    assert_hidden(result)


def test_database_that_does_not_exist_is_refused(loadsim: RunLoadsim, database_url: str) -> None:
    server = make_url(database_url)
    secret = server.password or SECRET
    url = server.set(database="no_such_database_xyz", password=secret)
    result = loadsim("run", "--database-url", url.render_as_string(hide_password=False), timeout=60)
    assert_user_error(result, DATABASE_UNAVAILABLE, "refused us", "no_such_database_xyz")
    assert_hidden(result, secret)


def test_database_url_from_the_environment_is_masked(loadsim: RunLoadsim) -> None:
    result = loadsim("run", env={"DATABASE_URL": UNREACHABLE_URL}, timeout=30)
    assert_user_error(result, DATABASE_UNAVAILABLE, "127.0.0.1", "***")
    assert_hidden(result)


def test_database_url_from_a_dotenv_file_is_masked(loadsim: RunLoadsim, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DATABASE_URL={UNREACHABLE_URL}\n", encoding="utf-8")
    result = loadsim("run", timeout=30)
    assert_user_error(result, DATABASE_UNAVAILABLE, "127.0.0.1", "***")
    assert_hidden(result)


# ------------------------------------------------------------------------ validate


def test_validate_accepts_a_good_file(loadsim: RunLoadsim, tmp_path: Path) -> None:
    path = write_scenarios(tmp_path, scenario_text(scenario="clients = 2"))
    result = loadsim("validate", str(path))
    assert_ok(result)
    assert "ok (1 scenarios, 1 presets)" in result.stdout
    assert result.stderr == ""


def test_validate_rejects_a_bad_file(loadsim: RunLoadsim, tmp_path: Path) -> None:
    path = write_scenarios(tmp_path, scenario_text(pool="pool_size = 0"))
    result = loadsim("validate", str(path))
    assert_user_error(result, SCENARIO_ERROR, str(path), "'pool_size'", "at least 1")


# ------------------------------------------------------- commands that need no server


def test_list_uses_the_packaged_scenarios(loadsim: RunLoadsim, tmp_path: Path) -> None:
    assert not any(tmp_path.iterdir())
    result = loadsim("list")
    assert_ok(result)
    names = [line.split()[0] for line in result.stdout.splitlines()]
    shipped = tomllib.loads((REPOSITORY / "scenarios.toml").read_text())["scenarios"]
    assert names == list(shipped)


def test_show_uses_the_packaged_scenarios(loadsim: RunLoadsim, tmp_path: Path) -> None:
    assert not any(tmp_path.iterdir())
    result = loadsim("show", "normal")
    assert_ok(result)
    first, *rest = result.stdout.splitlines()
    assert first.startswith("# ")
    assert Path(first[2:]).parts[-2:] == ("loadsim", "scenarios.toml")
    assert any(line.split()[:2] == ["scenario", "normal"] for line in rest)


def test_show_masks_the_password(loadsim: RunLoadsim) -> None:
    result = loadsim("show", "normal", "--database-url", UNREACHABLE_URL)
    assert_ok(result)
    assert "postgresql://someone:***@127.0.0.1:1/db" in result.stdout
    assert_hidden(result)


def test_run_help(loadsim: RunLoadsim) -> None:
    result = loadsim("run", "--help")
    assert_ok(result)
    assert "--pool-size" in result.stdout
    assert "--duration" in result.stdout


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://someone@127.0.0.1:1/db?password={SECRET}",
        f"someone:{SECRET}@127.0.0.1:1/db",
    ],
)
def test_show_masks_passwords_in_any_url_shape(loadsim: RunLoadsim, url: str) -> None:
    result = loadsim("show", "normal", "--database-url", url)
    assert_hidden(result)


@pytest.mark.parametrize(
    ("arguments", "detail"),
    [
        (("run", "--pool-size", "abc"), "--pool-size"),
        (("run", "--log-format", "xml"), "--log-format"),
        (("frobnicate",), "frobnicate"),
        (("show",), "Missing argument"),
    ],
)
def test_usage_errors_are_one_line(
    loadsim: RunLoadsim, arguments: tuple[str, ...], detail: str
) -> None:
    assert_user_error(loadsim(*arguments), SCENARIO_ERROR, detail)


@pytest.mark.parametrize(
    ("scenario", "detail"),
    [
        ('iterations = 5\nduration = "1s"\n[scenarios.x.workload]\nhold = "2s"', "can outlast"),
        ('duration = "5s"\n[scenarios.x.faults]\nrestart = "6s"', "after the end of the run"),
        ('[scenarios.x.workload]\nhold = "exp()"', "'hold'"),
        ('[scenarios.x.workload]\nthink = "uniform(3s, 1s)"', "low <= high"),
        ("arrivals = { rate = 5 }\niterations = 2", "needs a 'duration'"),
    ],
)
def test_contradictory_values_are_refused(
    loadsim: RunLoadsim, tmp_path: Path, scenario: str, detail: str
) -> None:
    path = write_scenarios(tmp_path, f"[scenarios.x]\n{scenario}\n")
    assert_user_error(run_offline(loadsim, "x", "--file", str(path)), SCENARIO_ERROR, detail)


def test_a_flag_that_makes_a_fault_fall_after_the_end_is_refused(
    loadsim: RunLoadsim, tmp_path: Path
) -> None:
    path = write_scenarios(
        tmp_path, '[scenarios.x]\nduration = "10s"\n[scenarios.x.faults]\nrestart = "6s"\n'
    )
    result = run_offline(loadsim, "x", "--file", str(path), "--duration", "5s")
    assert_user_error(result, SCENARIO_ERROR, "after the end of the run")
