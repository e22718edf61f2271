"""The layers, as a user meets them: commands that only read files answer without loading the
run side's libraries (the import contracts themselves are checked by `lint-imports` in CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPOSITORY, RecordedLogs, clean_environment, free_port

#: Heavy libraries that only `loadsim run` (and, for matplotlib, report and compare) needs.
RUN_SIDE = (
    "sqlalchemy",
    "asyncpg",
    "structlog",
    "hdrh",
    "loadsim.run",
    "prometheus_client",  # live metrics: only a run with --metrics-port or --otlp-endpoint
    "opentelemetry",
    "google",  # protobuf, for OTLP
)
CHARTS = ("matplotlib",)

#: Runs the real command line in this process, then says which modules it loaded.
PROBE = """
import json, sys
from loadsim.cli import main
sys.argv = ["loadsim", *sys.argv[1:]]
try:
    main()
except SystemExit as stop:
    code = stop.code
print("LOADED " + json.dumps(sorted({name.split(".")[0] if not name.startswith("loadsim")
      else ".".join(name.split(".")[:2]) for name in sys.modules})), file=sys.stderr)
sys.exit(code)
"""


def loaded_by(tmp_path: Path, *arguments: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *arguments],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_environment(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("LOADED "), result.stderr
    return set(json.loads(last.removeprefix("LOADED ")))


@pytest.mark.parametrize(
    "arguments",
    [
        ("--help",),
        ("run", "--help"),
        ("list",),
        ("show", "normal"),
        ("show", "exhaustion", "--database-url", "postgresql://u:secret@db.example/x"),
        ("validate", str(REPOSITORY / "scenarios.toml")),
        ("show", "normal", "--metrics-port", "9464", "--otlp-endpoint", "http://otel:4318"),
        ("k8s", "normal", "--shards", "3", "--image", "loadsim:1"),
    ],
    ids=lambda arguments: " ".join(arguments)[:40],
)
def test_commands_that_read_files_load_no_run_side(
    tmp_path: Path, arguments: tuple[str, ...]
) -> None:
    loaded = loaded_by(tmp_path, *arguments)
    assert loaded.isdisjoint(RUN_SIDE + CHARTS), sorted(loaded & {*RUN_SIDE, *CHARTS})
    assert "loadsim.config" in loaded or "--help" in arguments  # the probe saw the command


def test_report_loads_the_charts_but_no_run_side(recorded: RecordedLogs, tmp_path: Path) -> None:
    loaded = loaded_by(tmp_path, "report", str(recorded.saturation), "--out", str(tmp_path / "out"))
    assert (tmp_path / "out" / "index.html").is_file()
    assert "matplotlib" in loaded  # it did draw
    assert loaded.isdisjoint(RUN_SIDE), sorted(loaded & set(RUN_SIDE))


#: The live metrics' libraries: only a run that asks for them loads them.
LIVE_METRICS = ("prometheus_client", "opentelemetry", "google")


def test_a_run_loads_the_live_metrics_libraries_only_when_asked(
    tmp_path: Path, database_url: str
) -> None:
    run = ("run", "normal", "--iterations", "1", "-q", "--database-url", database_url)
    plain = loaded_by(tmp_path, *run)
    assert "sqlalchemy" in plain  # it did run
    assert plain.isdisjoint(LIVE_METRICS), sorted(plain & set(LIVE_METRICS))
    port = str(free_port())
    asked = loaded_by(
        tmp_path, *run, "--metrics-port", port, "--otlp-endpoint", "http://127.0.0.1:9"
    )
    assert set(LIVE_METRICS) <= asked
