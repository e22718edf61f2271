"""`loadsim report` and `loadsim compare` as commands, on the logs checked in under tests/data:
what they print, what they write, and how they refuse a log they cannot read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import RecordedLogs, RunLoadsim, first_lines

pytestmark = pytest.mark.usefixtures("no_stray_reports")


def test_compare_shows_pooled_beating_unpooled(
    loadsim: RunLoadsim, recorded: RecordedLogs, tmp_path: Path
) -> None:
    result = loadsim("compare", str(recorded.pooled), "--out", "compared")
    assert result.returncode == 0, result.stderr
    rows = {
        line[:22].strip(): line[22:].split()
        for line in result.stdout.splitlines()
        if line.strip() and not line.startswith(" ")
    }
    header = result.stdout.splitlines()[0].split()
    assert header == ["pooled", "unpooled"]

    def number(text: str) -> float:
        return float(text.replace(",", ""))

    pooled, unpooled = (number(value) for value in rows["checkouts/s"])
    assert pooled > unpooled > 0
    connects = [number(value) for value in rows["connects"]]
    assert connects[0] < connects[1]
    assert re.search(r"pooled made [\d.]+x the checkouts/s of unpooled", result.stdout)
    for name in ("comparison.png", "comparison-over-time.png", "index.html"):
        assert (tmp_path / "compared" / name).stat().st_size > 0


def test_compare_several_logs(loadsim: RunLoadsim, recorded: RecordedLogs) -> None:
    result = loadsim("compare", str(recorded.saturation), str(recorded.pooled), "--out", "c")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == [
        "saturation",
        "exhaustion",
        "pooled",
        "unpooled",
    ]


def test_report_reads_standard_input(
    loadsim: RunLoadsim, recorded: RecordedLogs, tmp_path: Path
) -> None:
    result = loadsim("report", "-", "--out", "from-stdin", stdin=recorded.instances.read_bytes())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(Path("from-stdin") / "index.html")
    assert len(list((tmp_path / "from-stdin").glob("*.png"))) == 5  # with the memory chart
    assert "&lt;stdin&gt;" in (tmp_path / "from-stdin" / "index.html").read_text(encoding="utf-8")


def test_a_malformed_line_is_an_error_naming_it(
    loadsim: RunLoadsim, recorded: RecordedLogs, tmp_path: Path
) -> None:
    lines = recorded.saturation.read_bytes().splitlines(keepends=True)
    log = tmp_path / "bad.jsonl"
    log.write_bytes(b"".join([*lines[:41], b'{"t": 1.0, "event": "pool.check\n', *lines[41:]]))
    result = loadsim("report", str(log))
    assert result.returncode == 2
    assert result.stderr.startswith("loadsim: error: ")
    assert "bad.jsonl: line 42 is not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad-report").exists()


def test_a_truncated_last_line_is_tolerated_and_said(
    loadsim: RunLoadsim, recorded: RecordedLogs, tmp_path: Path
) -> None:
    content = recorded.saturation.read_bytes()
    cut = content[: len(content) // 2]
    assert not cut.endswith(b"\n")
    complete_lines = cut.count(b"\n")
    log = tmp_path / "cut.jsonl"
    log.write_bytes(cut)
    result = loadsim("report", str(log))
    assert result.returncode == 0, result.stderr
    assert f"cut.jsonl: line {complete_lines + 1} is cut short" in result.stderr
    assert "has no run.end" in result.stderr
    page = (tmp_path / "cut-report" / "index.html").read_text(encoding="utf-8")
    assert "is cut short" in page  # the page says so too


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"level": "info", "msg": "hello", "time": 1}\n', "line 1: not a loadsim run log"),
        (b"2024-01-01 INFO started\n", "line 1 is not JSON: this is not a loadsim run log"),
        (b"", "empty: no events"),
        (
            b'{"ts": "x", "t": 0, "event": "run.start", "scenario": "s", "schema_version": 99}\n',
            "schema_version 99 is not one this loadsim reads",
        ),
    ],
    ids=["other-jsonl", "plain-text", "empty", "newer-schema"],
)
def test_a_log_from_another_tool_is_refused(
    loadsim: RunLoadsim, tmp_path: Path, content: bytes, message: str
) -> None:
    log = tmp_path / "other.jsonl"
    log.write_bytes(content)
    # compare reads logs as report does: one case is enough for it
    for command in ("report", "compare") if not content else ("report",):
        result = loadsim(command, str(log))
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_a_missing_log_is_refused(loadsim: RunLoadsim, tmp_path: Path) -> None:
    result = loadsim("report", "nowhere.jsonl")
    assert result.returncode == 2
    assert "nowhere.jsonl: no such file" in result.stderr


def test_the_report_never_imports_the_run_side(recorded: RecordedLogs, tmp_path: Path) -> None:
    log = tmp_path / "short.jsonl"
    log.write_text("".join(first_lines(recorded.saturation, 200)), encoding="utf-8")
    script = (
        "import sys\n"
        "from loadsim.report import build_comparison, build_report\n"
        f"build_report([{str(log)!r}], __import__('pathlib').Path('o'))\n"
        f"build_comparison([{str(log)!r}], __import__('pathlib').Path('c'))\n"
        "run_side = ['loadsim.run', 'loadsim.config', 'sqlalchemy', 'asyncpg', 'structlog']\n"
        "print([m for m in run_side if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
