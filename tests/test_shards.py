"""A fleet across machines: shard processes started as a Kubernetes Indexed Job starts them
(`LOADSIM_SHARDS`, `JOB_COMPLETION_INDEX`, a shared `LOADSIM_RUN_ID`), merged by
`loadsim merge` into one stream whose run.summary is `--instances`'s."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from hdrh.histogram import HdrHistogram

from loadsim.report import build_report
from loadsim.run.merge import shards_merged
from loadsim.shard_logs import shard_run_id, shard_runs
from tests.conftest import RunLoadsim
from tests.helpers import (
    assert_user_error,
    by_name,
    parse_events,
    run_shards,
)

RUN_ID = "shardtest01"


def merged_percentile(encoded: list[str], percentile: float) -> float:
    """The percentile of the shards' histograms together, straight from hdrh."""
    merged: HdrHistogram | None = None
    for text in encoded:
        histogram = HdrHistogram.decode(text.encode("ascii"))
        if merged is None:
            merged = histogram
        else:
            merged.add(histogram)
    assert merged is not None
    return round(merged.get_value_at_percentile(percentile) / 1000, 3)


@pytest.fixture(scope="module")
def shard_logs(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return run_shards(database_url, tmp_path_factory.mktemp("shards"), 3, run_id=RUN_ID)


def test_merged_shards_are_one_fleet(loadsim: RunLoadsim, shard_logs: list[Path]) -> None:
    result = loadsim("merge", *map(str, shard_logs))
    assert result.returncode == 0, result.stderr
    events = parse_events(result.stdout)  # every line JSON, and as the schema says
    stamps = [event["ts"] for event in events]
    assert stamps == sorted(stamps)  # in time order
    assert {event["run_id"] for event in events} == {RUN_ID}
    starts = by_name(events, "run.start")
    assert sorted(event["instance"] for event in starts) == [0, 1, 2]
    assert {event["instances"] for event in starts} == {3}
    ends = {event["instance"]: event["summary"] for event in by_name(events, "run.end")}
    assert sorted(ends) == [0, 1, 2]
    assert events[-1]["event"] == "run.summary"
    assert events[-1]["instances"] == 3
    fleet = events[-1]["summary"]
    assert fleet["instances"] == 3
    assert fleet["checkouts"] == sum(summary["checkouts"] for summary in ends.values())
    assert fleet["connects"] == sum(summary["connects"] for summary in ends.values())
    assert fleet["wait_time_ms"]["count"] == fleet["checkouts"]
    assert [row["instance"] for row in fleet["by_instance"]] == [0, 1, 2]
    for name in ("wait_time", "use_time"):
        encoded = [ends[index]["histograms"][name] for index in range(3)]
        for key, percentile in (("p50", 50), ("p99", 99)):
            assert fleet[f"{name}_ms"][key] == merged_percentile(encoded, percentile)


def test_the_merged_summary_is_shaped_as_instances_writes_it(
    loadsim: RunLoadsim, shard_logs: list[Path], database_url: str
) -> None:
    merged = parse_events(loadsim("merge", *map(str, shard_logs)).stdout)[-1]
    local = loadsim(
        "run",
        "normal",
        "--instances",
        "3",
        "--duration",
        "1s",
        "--clients",
        "3",
        "--quiet",
        "--database-url",
        database_url,
    )
    assert local.returncode == 0, local.stderr
    instances = parse_events(local.stdout)[-1]
    assert instances["event"] == merged["event"] == "run.summary"
    assert set(merged) == set(instances)
    assert set(merged["summary"]) == set(instances["summary"])
    assert [set(row) for row in merged["summary"]["by_instance"]] == [
        set(row) for row in instances["summary"]["by_instance"]
    ]


def test_report_accepts_a_merged_log(
    loadsim: RunLoadsim, shard_logs: list[Path], tmp_path: Path
) -> None:
    merged = tmp_path / "fleet.jsonl"
    result = loadsim("merge", *map(str, shard_logs), "--output", str(merged))
    assert result.returncode == 0, result.stderr
    report = loadsim("report", str(merged), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "index.html").exists()


def test_report_reads_shard_logs_as_the_fleet(shard_logs: list[Path], tmp_path: Path) -> None:
    """`loadsim report` and `compare` merge a fleet's shard logs first, as `merge` would:
    one scenario of three instances, its summary the fleet's."""
    shards = [parse_events(log.read_text()) for log in shard_logs]
    warnings: list[str] = []
    logs = [str(log) for log in shard_logs]
    with shards_merged(logs, shard_runs(logs), warn=warnings.append) as sources:
        assert len(sources) == 1  # the three logs, one fleet
        report = build_report(sources, tmp_path / "report")
    assert all("began" in warning for warning in warnings)  # (no --barrier: a start skew)
    ((data, _),) = report.scenarios
    assert data.instances == [0, 1, 2]
    assert data.summary is not None and data.summary["instances"] == 3
    ends = [by_name(events, "run.end")[0]["summary"] for events in shards]
    assert data.summary["checkouts"] == sum(end["checkouts"] for end in ends)


def test_report_and_compare_commands_take_shard_logs(
    loadsim: RunLoadsim, shard_logs: list[Path], tmp_path: Path
) -> None:
    logs = [str(log) for log in shard_logs]
    report = loadsim("report", *logs, "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "index.html").exists()
    compare = loadsim("compare", *logs, "--out", str(tmp_path / "compare"))
    assert compare.returncode == 0, compare.stderr
    rows = [line for line in compare.stdout.splitlines() if "normal" in line]
    assert len(rows) == 1, compare.stdout  # the fleet, not three runs of one scenario


def test_only_a_shards_own_log_is_taken_for_one(
    loadsim: RunLoadsim, shard_logs: list[Path], tmp_path: Path
) -> None:
    assert {shard_run_id(str(log)) for log in shard_logs} == {RUN_ID}
    merged = tmp_path / "fleet.jsonl"
    assert loadsim("merge", *map(str, shard_logs), "--output", str(merged)).returncode == 0
    assert shard_run_id(str(merged)) is None  # a whole fleet's log ends with run.summary
    single = tmp_path / "single.jsonl"
    single.write_text(shard_logs[0].read_text().replace('"instances":3', '"instances":1'))
    assert shard_run_id(str(single)) is None
    assert shard_run_id("-") is None


def test_a_threshold_is_judged_on_the_fleet(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    logs = run_shards(database_url, tmp_path, 2, "--threshold", "checkouts < 1", run_id=RUN_ID)
    result = loadsim("merge", *map(str, logs))
    assert result.returncode == 1, result.stderr
    events = parse_events(result.stdout)
    (verdict,) = by_name(events, "run.threshold")
    assert verdict["passed"] is False
    fleet = events[-1]["summary"]
    assert verdict["value"] == fleet["checkouts"]
    assert "threshold failed in normal: checkouts < 1" in result.stderr


def test_mixed_runs_are_refused(
    loadsim: RunLoadsim, shard_logs: list[Path], tmp_path: Path
) -> None:
    other = tmp_path / "other.jsonl"
    other.write_text(shard_logs[1].read_text().replace(RUN_ID, "someotherrun"))
    result = loadsim("merge", str(shard_logs[0]), str(other))
    assert_user_error(result, 2, "different runs", RUN_ID, "someotherrun")


def test_a_duplicate_shard_is_refused(loadsim: RunLoadsim, shard_logs: list[Path]) -> None:
    result = loadsim("merge", str(shard_logs[0]), str(shard_logs[1]), str(shard_logs[0]))
    assert_user_error(result, 2, "shard 0", "more than one log")


def test_a_missing_shard_is_named(loadsim: RunLoadsim, shard_logs: list[Path]) -> None:
    result = loadsim("merge", str(shard_logs[0]), str(shard_logs[2]))
    assert result.returncode == 0, result.stderr
    assert "shard(s) 1 of 3" in result.stderr
    assert parse_events(result.stdout)[-1]["summary"]["instances"] == 2


@pytest.mark.parametrize(
    ("arguments", "env", "detail"),
    [
        (["--shard", "3/3", "--run-id", "x"], {}, "--shard '3/3'"),
        (["--shard", "a/3", "--run-id", "x"], {}, "expected I/N"),
        (["--shard", "0/0", "--run-id", "x"], {}, "--shard '0/0'"),
        (["--shard", "0/3"], {}, "--run-id or LOADSIM_RUN_ID"),
        ([], {"LOADSIM_SHARDS": "3", "JOB_COMPLETION_INDEX": "-1"}, "JOB_COMPLETION_INDEX"),
        ([], {"LOADSIM_SHARDS": "3"}, "JOB_COMPLETION_INDEX is not"),
    ],
)
def test_bad_shard_values_are_one_line(
    loadsim: RunLoadsim, arguments: list[str], env: dict[str, str], detail: str
) -> None:
    result = loadsim("run", "normal", *arguments, env={"LOADSIM_RUN_ID": "", **env})
    assert_user_error(result, 2, detail)


def test_start_at_holds_the_load_back(loadsim: RunLoadsim, database_url: str) -> None:
    start_at = time.time() + 2
    result = loadsim(
        "run",
        "normal",
        "--iterations",
        "2",
        "--clients",
        "2",
        "--quiet",
        "--start-at",
        f"{start_at:.3f}",
        "--database-url",
        database_url,
    )
    assert result.returncode == 0, result.stderr
    events = parse_events(result.stdout)
    (start,) = by_name(events, "run.start")
    assert 0 < start["start_wait_s"] <= 2
    given = float(f"{start_at:.3f}")  # the time as the flag gave it, to the millisecond
    assert given <= start["began_epoch_s"] < given + 0.1
    checkouts = by_name(events, "client.acquired")
    assert checkouts
    # every checkout comes after the start time (ts is wall-clock, to the microsecond)
    assert min(dt.datetime.fromisoformat(e["ts"]).timestamp() for e in checkouts) >= start_at


def test_a_bad_start_at_is_one_line(loadsim: RunLoadsim) -> None:
    result = loadsim("run", "normal", "--start-at", "soon")
    assert_user_error(result, 2, "--start-at 'soon'")


def test_merge_of_what_is_no_log_is_one_line(loadsim: RunLoadsim, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an event\n")
    assert_user_error(loadsim("merge", "missing.jsonl"), 2, "cannot read missing.jsonl")
    assert_user_error(loadsim("merge", "notes.txt"), 2, "notes.txt: line 1 is not")


def test_merge_never_overwrites_without_force_and_reads_its_logs_first(
    loadsim: RunLoadsim, shard_logs: list[Path], tmp_path: Path
) -> None:
    """--output as run's: an existing file is kept without --force; with it, a log merged
    into itself is read whole before the merged stream replaces it."""
    first, *others = (tmp_path / log.name for log in shard_logs)
    for copy, log in zip((first, *others), shard_logs, strict=True):
        copy.write_bytes(log.read_bytes())
    before = first.read_bytes()
    refused = loadsim("merge", *map(str, (first, *others)), "--output", str(first))
    assert_user_error(refused, 2, f"--output {first}", "--force")
    assert first.read_bytes() == before
    merged = loadsim("merge", *map(str, (first, *others)), "--output", str(first), "--force")
    assert merged.returncode == 0, merged.stderr
    events = parse_events(first.read_text())
    assert sorted(e["instance"] for e in by_name(events, "run.end")) == [0, 1, 2]
    (summary,) = by_name(events, "run.summary")
    shards = [by_name(parse_events(log.read_text()), "run.end")[0] for log in shard_logs]
    assert summary["summary"]["checkouts"] == sum(e["summary"]["checkouts"] for e in shards)
