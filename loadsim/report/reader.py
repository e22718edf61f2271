"""Reading a run log: JSON lines in, events out, one at a time, each with its line number.

The log is streamed: only the current line and the one before it are in memory. The first
event must be loadsim's `run.start` with a `schema_version` this code understands; a line that
is not a JSON object with `event` and `t` is an error naming the file and the line. The one
exception is the last line: a run that was killed can leave half a line behind (writes are
buffered), so a last line that does not parse and has no newline is skipped and said.

Every schema version in `loadsim.schema.SUPPORTED_SCHEMA_VERSIONS` is read; an older log's
events come out in the current version's field names (`loadsim.schema.upgrade_event`), so
nothing after the reader knows there were versions.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from loadsim.errors import EventLogError
from loadsim.schema import RENAMED_EVENTS, SCHEMA_VERSION, SUPPORTED_SCHEMA_VERSIONS, upgrade_event

STDIN = "-"

Event = dict[str, Any]
Note = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class LogSource:
    """Where a log comes from: a file, or standard input (`-`)."""

    name: str  # as the person typed it
    path: Path | None  # None for stdin

    @classmethod
    def of(cls, name: str | Path) -> LogSource:
        text = str(name)
        return cls(text, None if text == STDIN else Path(text))

    @property
    def label(self) -> str:
        return "<stdin>" if self.path is None else self.name

    @property
    def stem(self) -> str:
        return "stdin" if self.path is None else self.path.stem


def read_events(source: LogSource, note: Note | None = None) -> Iterator[tuple[int, Event]]:
    """Every event of a log with its line number (1-based), in order.

    Raises EventLogError for a log loadsim cannot read. `note` is told about anything
    tolerated (a truncated last line).
    """
    if source.path is None:
        yield from _events(sys.stdin.buffer, source, note)
        return
    try:
        stream = source.path.open("rb")
    except FileNotFoundError:
        raise EventLogError(f"{source.label}: no such file") from None
    except IsADirectoryError:
        raise EventLogError(f"{source.label}: is a directory, not a run log") from None
    except OSError as error:
        raise EventLogError(f"{source.label}: cannot read: {error.strerror}") from None
    with stream:
        yield from _events(stream, source, note)


def _events(stream: IO[bytes], source: LogSource, note: Note | None) -> Iterator[tuple[int, Event]]:
    """The log's events, each in the current schema's names."""
    # The version each run.start declared, by (run_id, scenario, instance): a log may hold
    # several scenarios, and a fleet's instances interleave.
    versions: dict[tuple[Any, Any, Any], int] = {}
    for number, event in _parsed(stream, source, note):
        name = event["event"]
        if name == "run.start":
            versions[_key(event)] = event["schema_version"]
        elif name in RENAMED_EVENTS:
            version = versions.get(_key(event), SCHEMA_VERSION)
            if version != SCHEMA_VERSION:
                event = upgrade_event(event, version)
        yield number, event


def _key(event: Event) -> tuple[Any, Any, Any]:
    return event.get("run_id"), event.get("scenario"), event.get("instance") or 0


def _parsed(stream: IO[bytes], source: LogSource, note: Note | None) -> Iterator[tuple[int, Event]]:
    label = source.label
    previous: bytes | None = None
    number = 0
    seen = 0
    for raw in stream:
        if previous is not None:
            event = _parse(previous, number, label, first=seen == 0)
            if event is not None:
                seen += 1
                yield number, event
        number += 1
        previous = raw
    if previous is not None:
        if previous.endswith(b"\n"):
            event = _parse(previous, number, label, first=seen == 0)
        else:
            try:
                event = _parse(previous, number, label, first=seen == 0)
            except EventLogError:
                if seen == 0:
                    raise
                if note is not None:
                    note(
                        f"{label}: line {number} is cut short (the run was interrupted?); "
                        "it was skipped"
                    )
                event = None
        if event is not None:
            seen += 1
            yield number, event
    if seen == 0:
        raise EventLogError(f"{label}: empty: no events (expected loadsim's JSON lines)")


def _parse(raw: bytes, number: int, label: str, *, first: bool) -> Event | None:
    if not raw.strip():
        return None
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        if first:
            raise EventLogError(
                f"{label}: line {number} is not JSON: this is not a loadsim run log "
                "(write one with 'loadsim run --output FILE')"
            ) from None
        raise EventLogError(
            f"{label}: line {number} is not valid JSON ({error.msg} at column {error.colno})"
        ) from None
    if not isinstance(event, dict):
        raise EventLogError(
            f"{label}: line {number}: expected a JSON object, found {type(event).__name__}"
        )
    name = event.get("event")
    t = event.get("t")
    version = event.get("schema_version")
    if first and (name != "run.start" or version is None):
        raise EventLogError(
            f"{label}: line {number}: not a loadsim run log (its first event must be "
            "'run.start' with a schema_version; write one with 'loadsim run --output FILE')"
        )
    if name == "run.start":
        if version is None:
            raise EventLogError(f"{label}: line {number}: run.start without a schema_version")
        if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
            raise EventLogError(
                f"{label}: line {number}: schema_version {version!r} is not one this loadsim "
                f"reads ({', '.join(map(str, sorted(SUPPORTED_SCHEMA_VERSIONS)))})"
            )
    if not isinstance(name, str):
        raise EventLogError(f"{label}: line {number}: no 'event' name")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise EventLogError(f"{label}: line {number}: {name}: no time 't' (seconds)")
    if not isinstance(event.get("scenario"), str):
        raise EventLogError(f"{label}: line {number}: {name}: no 'scenario'")
    return event
