"""`loadsim merge`: the logs of a fleet's shards (`run --shard I/N`) made one stream.

The shards' events are written in time order (by `ts`), then, for each scenario, the fleet's
`run.summary` exactly as `run --instances N` writes it (fleet.py's `aggregate`: the same
function, so the two cannot drift), after the scenario's thresholds (from its run.start)
judged on the fleet as `run.threshold` events. Its `start_skew_ms` says how far apart the
shards began, on the server's clock (a warning past `SKEW_WARNING_MS`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from loadsim.config.scenario import parse_duration
from loadsim.config.settings import RunConfig
from loadsim.config.thresholds import evaluate, parse_threshold
from loadsim.errors import EventLogError, ScenarioError
from loadsim.run.barrier import DEFAULT_TIMEOUT_S as DEFAULT_BARRIER_TIMEOUT_S
from loadsim.run.events import EventLog, EventSink
from loadsim.run.fleet import aggregate, start_skew_ms

#: A fleet whose shards began further apart than this is warned of: its first moments are
#: not the load of N shards.
SKEW_WARNING_MS = 50.0


@dataclass
class _Scenario:
    """What the shards wrote of one scenario: by instance, their run.start and run.end."""

    starts: dict[int, dict[str, Any]] = field(default_factory=dict)
    ends: dict[int, dict[str, Any]] = field(default_factory=dict)
    first_ts: float = float("inf")
    last_ts: float = 0.0


@dataclass
class MergeResult:
    #: The fleet's threshold results, every scenario's.
    thresholds: list[dict[str, Any]] = field(default_factory=list)


def _epoch(ts: str) -> float:
    return dt.datetime.fromisoformat(ts).timestamp()


def _read(source: str) -> list[tuple[float, int, bytes, dict[str, Any]]]:
    """A log's events: (epoch seconds, line number, the line, the event)."""
    stream: IO[bytes]
    stream = sys.stdin.buffer if source == "-" else _open(source)
    events = []
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                when = _epoch(event["ts"])
            except (ValueError, KeyError, TypeError):
                raise EventLogError(f"{source}: line {number} is not a loadsim event") from None
            events.append((when, number, line if line.endswith(b"\n") else line + b"\n", event))
    return events


def _open(path: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as error:
        raise EventLogError(f"cannot read {path}: {error.strerror}") from None


def merge_logs(sources: Sequence[str], sink: EventSink, warn: Callable[[str], None]) -> MergeResult:
    """Writes the shards' events in time order, then each scenario's fleet summary."""
    if list(sources).count("-") > 1:
        raise EventLogError("'-' (standard input) can be given only once")
    lines: list[tuple[float, int, int, bytes]] = []
    run_ids: dict[str, str] = {}
    scenarios: dict[str, _Scenario] = {}
    for order, source in enumerate(sources):
        for when, number, line, event in _read(source):
            run_id = str(event.get("run_id"))
            run_ids.setdefault(run_id, source)
            if event.get("event") == "run.summary":
                continue  # a summary of its own (a log already merged): ours replaces it
            lines.append((when, order, number, line))
            scenario = scenarios.setdefault(str(event.get("scenario")), _Scenario())
            scenario.first_ts = min(scenario.first_ts, when)
            scenario.last_ts = max(scenario.last_ts, when)
            instance = event.get("instance")
            if event.get("event") == "run.start" and isinstance(instance, int):
                if instance in scenario.starts:
                    raise ScenarioError(
                        f"shard {instance} of scenario {event.get('scenario')!r} is in more "
                        f"than one log ({scenario.starts[instance]['_source']} and {source})"
                    )
                scenario.starts[instance] = {**event, "_source": source}
            elif event.get("event") == "run.end" and isinstance(instance, int):
                scenario.ends[instance] = event["summary"]
    if len(run_ids) > 1:
        named = ", ".join(f"{run_id} ({source})" for run_id, source in run_ids.items())
        raise ScenarioError(f"the logs are of different runs: run_ids {named}")
    if not scenarios:
        raise EventLogError("no events in the logs given")
    lines.sort()
    for _, _, _, line in lines:
        sink.msg(line)
    result = MergeResult()
    (run_id,) = run_ids
    for name, scenario in scenarios.items():
        result.thresholds += _summarise(name, scenario, run_id, sink, warn)
    sink.flush()
    return result


@contextlib.contextmanager
def shards_merged(
    sources: Sequence[str], runs: Mapping[str, Sequence[str]], warn: Callable[[str], None]
) -> Iterator[list[str]]:
    """`sources` as `report` and `compare` read them: the shard logs of each run (`runs`,
    from shard_logs.shard_runs) merged, as `loadsim merge` merges them, into one log in a
    temporary directory that lasts as long as the context, in the place of the first of
    them."""
    with tempfile.TemporaryDirectory(prefix="loadsim-merged-") as directory:
        merged: dict[str, str] = {}
        for run_id, logs in runs.items():
            path = Path(directory) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}.jsonl"
            with open(path, "wb") as stream:
                merge_logs(logs, EventSink([stream]), warn)
            for log in logs:
                merged[log] = str(path)
        yield list(dict.fromkeys(merged.get(source, source) for source in sources))


def _summarise(
    name: str, scenario: _Scenario, run_id: str, sink: EventSink, warn: Callable[[str], None]
) -> list[dict[str, Any]]:
    """The fleet's run.summary for one scenario, after its thresholds judged on the fleet."""
    start = next(iter(scenario.starts.values()), {})
    expected = int(start.get("instances") or len(scenario.starts))
    missing = sorted(set(range(expected)) - set(scenario.ends))
    if missing:
        shards = ", ".join(str(number) for number in missing)
        warn(f"scenario {name!r}: no run.end from shard(s) {shards} of {expected}")
    if not scenario.ends:
        return []
    events = EventLog(
        sink,
        run_id=run_id,
        scenario=name,
        instance=None,
        started=time.perf_counter() - (scenario.last_ts - scenario.first_ts),
        epoch_started=scenario.first_ts,
    )
    summary = aggregate(scenario.ends)
    thresholds = tuple(parse_threshold(text) for text in start.get("thresholds") or ())
    results = evaluate(thresholds, summary)
    for outcome in results:
        events.emit("run.threshold", **outcome)
    if results:
        summary["thresholds"] = results
    skew = start_skew_ms(scenario.starts.values())
    if skew is not None and skew > SKEW_WARNING_MS:
        warn(
            f"scenario {name!r}: the shards began {skew:.0f} ms apart (more than "
            f"{SKEW_WARNING_MS:.0f} ms); run them with --barrier to begin together"
        )
    skewed = {} if skew is None else {"start_skew_ms": skew}
    events.emit("run.summary", instances=expected, **skewed, summary=summary)
    return [{"scenario": name, **outcome} for outcome in results]


def parse_shard(
    flag: str | None, run_id: str | None, environment: dict[str, str]
) -> tuple[int, int, str] | None:
    """(I, N, run_id) for `run --shard I/N`, or from LOADSIM_SHARDS=N with
    JOB_COMPLETION_INDEX=I (a Kubernetes Indexed Job); the flag wins. A fleet's shards must
    share a run id (`--run-id` or LOADSIM_RUN_ID): merge groups their logs by it. None when
    this run is no shard."""
    if flag is not None:
        text, what = flag, f"--shard {flag!r}"
    elif environment.get("LOADSIM_SHARDS"):
        index = environment.get("JOB_COMPLETION_INDEX")
        if index is None:
            raise ScenarioError("LOADSIM_SHARDS is set but JOB_COMPLETION_INDEX is not")
        text = f"{index}/{environment['LOADSIM_SHARDS']}"
        what = (
            f"JOB_COMPLETION_INDEX={index!r} with LOADSIM_SHARDS={environment['LOADSIM_SHARDS']!r}"
        )
    else:
        return None
    instance, _, count = text.partition("/")
    try:
        i, n = int(instance), int(count)
    except ValueError:
        raise ScenarioError(f"{what}: expected I/N, two whole numbers such as 0/3") from None
    if n < 1 or not 0 <= i < n:
        raise ScenarioError(f"{what}: the shard I must be 0 to N-1 and N at least 1")
    run_id = run_id or environment.get("LOADSIM_RUN_ID")
    if not run_id:
        raise ScenarioError(
            f"{what}: a shard needs the fleet's run id (--run-id or LOADSIM_RUN_ID), the same "
            "for every shard"
        )
    return i, n, run_id


def parse_start_at(text: str) -> float:
    """--start-at: epoch seconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ScenarioError(
            f"--start-at {text!r}: expected epoch seconds or an ISO time such as "
            "2026-12-03T16:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def parse_barrier(
    wanted: bool, timeout: str | None, sharded: bool, configs: Sequence[RunConfig]
) -> float | None:
    """--barrier's bound in seconds, or None without --barrier. Only a shard meets the
    others, and only in a server they share (an embedded one is this process's alone)."""
    if not wanted:
        if timeout is not None:
            raise ScenarioError("--barrier-timeout is the bound of --barrier: add --barrier")
        return None
    if not sharded:
        raise ScenarioError(
            "--barrier is for a shard of a fleet (--shard I/N, or LOADSIM_SHARDS with "
            "JOB_COMPLETION_INDEX): it waits for the fleet's other shards"
        )
    if any(config.database_url is None for config in configs):
        raise ScenarioError(
            "--barrier meets the other shards in the server they share: give it with "
            "--database-url or DATABASE_URL (an embedded server is this process's alone)"
        )
    if timeout is None:
        return DEFAULT_BARRIER_TIMEOUT_S
    try:
        seconds = parse_duration(timeout)
    except ValueError as error:
        raise ScenarioError(f"--barrier-timeout {timeout!r}: {error}") from None
    if seconds <= 0:
        raise ScenarioError(f"--barrier-timeout {timeout!r}: it must be longer than 0")
    return seconds
