"""loadsim/schema.py is the one declaration of the event stream: every event the tests see is
checked against it (`parse_events`), and these tests check the declaration itself, the
`loadsim schema` document made from it, README's table of events, and reading older logs."""

from __future__ import annotations

import io
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from loadsim import schema
from loadsim.errors import EventLogError
from loadsim.report.aggregate import read_log
from loadsim.report.reader import LogSource, read_events
from loadsim.run.events import EventLog, EventSink
from tests.helpers import (
    REPOSITORY,
    RunLoadsim,
    clean_environment,
    parse_events,
    unpack_recorded_logs,
    write_scenarios,
)

README = (REPOSITORY / "README.md").read_text(encoding="utf-8")
UNITS = {"ms", "s", "count", "count/s", "ratio", "MiB"}


def envelope(event: str, instance: int | None = 0, **fields: Any) -> dict[str, Any]:
    """An event as loadsim writes it: the envelope first, in order, then its fields."""
    line = {"ts": "2026-01-01T00:00:00.000001Z", "t": 0.5, "event": event, "run_id": "r1"}
    return {**line, "scenario": "s", "instance": instance, **fields}


#: The pool's counts a client.acquired carries.
COUNTS = dict.fromkeys(schema.POOL_COUNTS, 1)


def acquired(**extra: Any) -> dict[str, Any]:
    return envelope(
        "client.acquired", client=3, conn=1, backend_pid=99, wait_ms=0.25, **COUNTS, **extra
    )


# ------------------------------------------------------------------ the declaration


def test_every_event_and_field_is_declared_with_a_meaning_and_a_known_unit() -> None:
    assert set(schema.EVENTS) == schema.EVENT_NAMES
    assert schema.EVENT_NAMES == (
        schema.POOL_EVENTS
        | schema.CLIENT_EVENTS
        | schema.MONITOR_EVENTS
        | schema.FAULT_EVENTS
        | schema.RUN_EVENTS
        | schema.SIZE_EVENTS
    )
    assert schema.ENVELOPE == ("ts", "t", "event", "run_id", "scenario", "instance")

    def walk(fields: tuple[schema.Field, ...], where: str) -> None:
        names = [field.name for field in fields]
        assert len(names) == len(set(names)), f"{where}: a field declared twice"
        for field in fields:
            assert field.meaning.strip(), f"{where}.{field.name}: no meaning"
            assert field.unit is None or field.unit in UNITS, f"{where}.{field.name}"
            assert set(field.types) <= {
                "string",
                "integer",
                "number",
                "boolean",
                "object",
                "array",
                "null",
            }
            if field.name.endswith("_ms") and "object" not in field.types:
                assert field.unit == "ms", f"{where}.{field.name}: a _ms key not in ms"
            if field.keys is not None:
                walk(field.keys, f"{where}.{field.name}")
            if field.each is not None:
                walk((field.each,), f"{where}.{field.name}[]")

    walk(schema.ENVELOPE_FIELDS, "envelope")
    for spec in schema.EVENTS.values():
        assert spec.meaning.strip()
        assert not set(spec.field_names) & set(schema.ENVELOPE), spec.name
        walk(spec.fields, spec.name)


def test_every_pool_event_and_client_timeout_carry_the_pool_counts() -> None:
    for name in (*schema.POOL_EVENTS, "client.timeout", "monitor.stats"):
        assert set(schema.POOL_COUNTS) <= set(schema.EVENTS[name].field_names), name
    assert schema.POOL_COUNTS == (
        "connections_total",
        "connections_used",
        "connections_idle",
        "overflow",
        "pending_requests",
    )


def test_threshold_metrics_and_summing_figures_are_in_both_summaries() -> None:
    both = schema.SUMMARY_KEYS & schema.FLEET_SUMMARY_KEYS
    assert set(schema.ADDITIVE_FIGURES) <= both
    assert set(schema.RATIO_FIGURES) <= both
    for metric in schema.METRICS:
        target = schema.METRIC_ALIASES.get(metric, metric)
        key = schema.LATENCY_METRICS[target][0] if target in schema.LATENCY_METRICS else target
        assert key in both, metric
    assert "wait_time_p99_9_ms" in schema.METRICS and "timeouts" in schema.METRICS
    assert schema.summary_figure({"wait_time_ms": {"count": 2, "p95": 3}}, "wait_time_p95_ms") == 3
    assert schema.summary_figure({"leaks_suspected": 2}, "leaks") == 2
    assert schema.summary_figure({}, "elapsed_s") is None
    with pytest.raises(KeyError):
        schema.summary_figure({}, "wait_time_p42_ms")


def test_compare_reads_only_declared_summary_figures() -> None:
    from loadsim.report import compare

    assert set(compare._SUMMARY_FIGURE.values()) <= schema.FIGURES
    assert set(compare._SUMMARY_FIGURE) == {key for key, _, _ in compare.ROWS}


# ----------------------------------------------------------------------- the check


def test_a_declared_event_passes_the_check() -> None:
    assert schema.event_problems(acquired()) == []
    cancel_client = envelope("client.acquired", client=3, conn=None, backend_pid=None, **COUNTS)
    assert schema.event_problems(cancel_client) == []
    assert schema.undeclared_fields(acquired()) == []


def test_a_field_added_at_an_emit_site_without_declaring_it_fails_the_check() -> None:
    """An emit site that adds a field the schema lacks: the line it renders fails
    `parse_events`, so every test that runs loadsim would fail on it."""
    stream = io.BytesIO()
    log = EventLog(EventSink([stream]), run_id="r1", scenario="s")
    log.emit("client.acquired", client=3, conn=1, backend_pid=99, wait_ms=0.25, **COUNTS)
    assert parse_events(stream.getvalue().decode())[0]["wait_ms"] == 0.25

    log.emit(
        "client.acquired",
        client=3,
        conn=1,
        backend_pid=99,
        wait_ms=0.25,
        **COUNTS,
        queue_position=2,
    )
    with pytest.raises(pytest.fail.Exception, match="'queue_position' is not declared"):
        parse_events(stream.getvalue().decode())
    assert schema.undeclared_fields(acquired(queue_position=2)) == ["queue_position"]


def test_unknown_events_missing_fields_and_wrong_types_fail_the_check() -> None:
    assert schema.event_problems(envelope("client.teleported", client=1)) == [
        "unknown event name 'client.teleported'"
    ]
    missing = dict(acquired())
    del missing["conn"]
    assert schema.event_problems(missing) == ["client.acquired: declared field 'conn' is missing"]
    assert schema.event_problems({**acquired(), "wait_ms": "soon"}) == [
        "client.acquired.wait_ms: string 'soon', declared number"
    ]
    # nested objects are declared too: a summary key nobody declared is caught
    problems = schema.event_problems(envelope("run.warning", message="hello", extra={"a": 1}))
    assert problems == ["run.warning: field 'extra' is not declared in loadsim.schema"]
    stats = _a_snapshot()
    assert schema.event_problems(stats) == []
    stats["wait_time_ms"] = {**stats["wait_time_ms"], "p42": 1.0}
    assert schema.event_problems(stats) == [
        "monitor.stats.wait_time_ms: field 'p42' is not declared in loadsim.schema"
    ]


def _a_snapshot() -> dict[str, Any]:
    counters = {field.name: 0 for field in schema.COUNTER_FIELDS}
    window = {k: v for k, v in counters.items() if k not in schema.HIGH_WATER_MARKS}
    return envelope(
        "monitor.stats",
        **dict.fromkeys(schema.POOL_COUNTS, 0),
        oldest_wait_ms=0.0,
        interval_s=1.0,
        window=window,
        checkouts_per_s=0.0,
        connects_per_s=0.0,
        utilisation=None,
        queue_jump_share=None,
        **{schema.latency_key(name): {"count": 0} for name in schema.LATENCY_NAMES},
        totals=counters,
        server={"idle": 2},
    )


def test_the_benchmarks_synthetic_log_follows_the_schema(tmp_path: Path) -> None:
    bench = runpy.run_path(str(REPOSITORY / "bench" / "report_million.py"))
    log = tmp_path / "bench.jsonl"
    bench["synthesise"](log, 8000)  # past the first monitor.stats (1 s)
    events = parse_events(log.read_text(encoding="utf-8"))
    assert events[0]["schema_version"] == schema.SCHEMA_VERSION
    assert {"run.start", "client.acquired", "monitor.stats", "run.end"} <= {
        event["event"] for event in events
    }


# ------------------------------------------------------------------------ README


def test_the_readme_event_table_lists_exactly_the_schemas_events() -> None:
    section = README.split("\n## Events\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows
    listed: list[str] = []
    for row in rows:
        first_column = row.split("|")[1]
        listed.extend(re.findall(r"`([a-z_]+\.[a-z_]+)`", first_column))
    assert len(listed) == len(set(listed)), "an event listed twice"
    assert set(listed) == schema.EVENT_NAMES


def test_the_readme_names_client_timeouts_fields_as_the_schema_does() -> None:
    row = next(line for line in README.splitlines() if line.startswith("| `client.timeout`"))
    for name in schema.POOL_COUNTS:
        assert f"`{name}`" in row
    jq = next(line for line in README.splitlines() if '.event=="client.timeout"' in line)
    for name in re.search(r"\{([^}]*)\}", jq).group(1).split(", "):  # type: ignore[union-attr]
        assert name in schema.EVENTS["client.timeout"].field_names, name


# --------------------------------------------------------------- loadsim schema


def _schema_document(loadsim: RunLoadsim) -> dict[str, Any]:
    result = loadsim("schema")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_loadsim_schema_prints_a_valid_json_schema(loadsim: RunLoadsim) -> None:
    document = _schema_document(loadsim)
    assert document == schema.json_schema()
    jsonschema.Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(document["$defs"]) == schema.EVENT_NAMES
    assert len(document["oneOf"]) == len(schema.EVENT_NAMES)
    timeout = document["$defs"]["client.timeout"]
    assert timeout["additionalProperties"] is False
    assert timeout["properties"]["event"] == {
        "const": "client.timeout",
        "description": "the event's name, subject.verb",
    }
    assert "(unit: ms)" in timeout["properties"]["wait_ms"]["description"]
    assert "pending_requests" in timeout["required"]

    validator = jsonschema.Draft202012Validator(document)
    assert validator.is_valid(acquired())
    assert not validator.is_valid(acquired(queue_position=2))
    assert not validator.is_valid(envelope("client.teleported", client=1))
    assert not validator.is_valid({**acquired(), "wait_ms": "soon"})
    assert validator.is_valid(_a_snapshot())


def test_loadsim_schema_loads_no_database_library(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from loadsim.cli import main\n"
        "sys.argv = ['loadsim', 'schema']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('sqlalchemy', 'asyncpg', 'structlog', 'matplotlib') "
        "if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_environment(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "[]"
    assert json.loads(result.stdout)["$defs"]


EVERYTHING = """
[scenarios.everything]
description = "A little of everything: waits, timeouts, a leak reclaimed, a terminate fault"
clients = 4
duration = "2500ms"

[scenarios.everything.pool]
pool_size = 2
max_overflow = 0
pool_timeout = "300ms"
pool_pre_ping = true

[scenarios.everything.workload]
hold = "200ms"
think = "10ms"

[scenarios.everything.monitor]
interval = "500ms"
leak_threshold = "700ms"
leak_reclaim = "1200ms"

[[scenarios.everything.groups]]
name = "forgetful"
behaviour = "leak"
hold = "forever"

[scenarios.everything.faults]
terminate = ["1500ms"]
"""


def test_a_recorded_run_validates_against_loadsim_schema(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    """Every line of a real run, every event at LOG_LEVEL=debug, with timeouts, a leak, a
    fault and a threshold, is valid by the JSON Schema that `loadsim schema` prints."""
    write_scenarios(tmp_path, EVERYTHING)
    result = loadsim(
        "run",
        "everything",
        "--threshold",
        "timeouts == 0",
        "--events",
        "all",
        "--database-url",
        database_url,
        env={"LOG_LEVEL": "debug"},
    )
    assert result.returncode == 1, result.stderr  # the threshold fails: there were timeouts
    validator = jsonschema.Draft202012Validator(_schema_document(loadsim))
    seen = set()
    for number, line in enumerate(result.stdout.splitlines(), start=1):
        event = json.loads(line)
        errors = [error.message for error in validator.iter_errors(event)]
        assert not errors, f"line {number} ({event['event']}): {errors[:3]}"
        seen.add(event["event"])
    assert {
        "run.start",
        "pool.connect",
        "pool.reset",
        "client.timeout",
        "monitor.stats",
        "monitor.leak_suspected",
        "fault.terminate",
        "run.threshold",
        "run.end",
    } <= seen


def test_the_recorded_logs_follow_the_schema(loadsim: RunLoadsim, tmp_path: Path) -> None:
    """The logs checked in under tests/data (a fleet's among them): every line passes the
    check, and one line of each event kind is valid by the `loadsim schema` document. (A new
    SCHEMA_VERSION means recording them again: tests/data/record.py.)"""
    validator = jsonschema.Draft202012Validator(_schema_document(loadsim))
    recorded = unpack_recorded_logs(tmp_path)
    for log in (recorded.saturation, recorded.pooled, recorded.instances):
        events = parse_events(log.read_text(encoding="utf-8"))
        assert events[0]["schema_version"] == schema.SCHEMA_VERSION, log.name
        one_of_each = {event["event"]: event for event in events}
        for name, event in one_of_each.items():
            errors = [error.message for error in validator.iter_errors(event)]
            assert not errors, f"{log.name}: {name}: {errors[:3]}"


# --------------------------------------------------------------- older versions


def _v1_log(path: Path) -> Path:
    start = envelope(
        "run.start",
        schema_version=1,
        pool={"pool_size": 1, "max_overflow": 0, "pool_class": "queue"},
    )
    timeout = envelope(
        "client.timeout",
        client=2,
        wait_ms=300.5,
        message="QueuePool limit of size 1 overflow 0 reached",
        total=1,
        in_use=1,
        idle=0,
        waiting=2,
    )
    timeout["t"] = 1.0
    end = envelope("run.end", summary={"timeouts": 1, "elapsed_s": 2.0})
    end["t"] = 2.0
    lines = [json.dumps(event) for event in (start, timeout, end)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_version_1_log_is_read_with_version_2_names(tmp_path: Path) -> None:
    log = _v1_log(tmp_path / "v1.jsonl")
    events = [event for _, event in read_events(LogSource.of(log))]
    timeout = next(event for event in events if event["event"] == "client.timeout")
    assert list(timeout) == [
        *schema.ENVELOPE,
        "client",
        "wait_ms",
        "message",
        "connections_total",
        "connections_used",
        "connections_idle",
        "pending_requests",
    ]
    assert (timeout["connections_total"], timeout["connections_used"]) == (1, 1)
    assert (timeout["connections_idle"], timeout["pending_requests"]) == (0, 2)
    assert not {"total", "in_use", "idle", "waiting"} & timeout.keys()

    data = read_log(LogSource.of(log)).scenarios[0]
    assert data.timeouts.seen == 1
    assert data.summary == {"timeouts": 1, "elapsed_s": 2.0}


def test_only_the_version_1_scenarios_of_a_log_are_renamed(tmp_path: Path) -> None:
    """A log may hold runs of several versions (logs concatenated): each event is read by
    the version of its own run.start."""
    v1 = _v1_log(tmp_path / "v1.jsonl").read_text(encoding="utf-8")
    v2_start = envelope("run.start", run_id="r2", schema_version=2, pool={})
    v2_timeout = envelope(
        "client.timeout",
        run_id="r2",
        client=1,
        wait_ms=1.0,
        message="m",
        total=7,  # not a v2 field: left as it is, never taken for v1's
        **dict.fromkeys(schema.POOL_COUNTS, 1),
    )
    log = tmp_path / "both.jsonl"
    log.write_text(v1 + json.dumps(v2_start) + "\n" + json.dumps(v2_timeout) + "\n")
    timeouts = [event for _, event in read_events(LogSource.of(log)) if "wait_ms" in event]
    assert timeouts[0]["connections_total"] == 1 and "total" not in timeouts[0]
    assert timeouts[1]["total"] == 7 and timeouts[1]["connections_total"] == 1


def test_the_reader_takes_its_versions_from_the_schema(tmp_path: Path) -> None:
    assert {1, 2} <= schema.SUPPORTED_SCHEMA_VERSIONS
    assert schema.SCHEMA_VERSION in schema.SUPPORTED_SCHEMA_VERSIONS
    log = tmp_path / "future.jsonl"
    log.write_text(json.dumps(envelope("run.start", schema_version=99)) + "\n")
    with pytest.raises(EventLogError, match=r"schema_version 99 is not one this loadsim reads"):
        list(read_events(LogSource.of(log)))


def test_a_future_log_is_a_one_line_error(loadsim: RunLoadsim, tmp_path: Path) -> None:
    log = tmp_path / "future.jsonl"
    log.write_text(json.dumps(envelope("run.start", schema_version=99)) + "\n")
    result = loadsim("report", str(log))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "schema_version 99" in result.stderr
