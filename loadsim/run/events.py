"""The event stream: how each event is rendered, and the sinks its lines go to.

Every event is one flat JSON object on one line (names and fields: `loadsim/schema.py`). A run
hands each event's bare fields to its sink (`EventLog.emit`); the writer process
(`writer.py`) renders them through structlog's processor chain (`EventRenderer`: the
envelope and timestamps, then orjson's JSON or `ConsoleLines`) and writes them to stdout and,
with `--output`, to a file as well. An in-process `EventSink` renders the same way, at once.
"""

from __future__ import annotations

import datetime as dt
import errno
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import IO, Any, Literal

import orjson
import structlog

from loadsim.config.selection import wanted_events
from loadsim.schema import EVENT_NAMES

LogFormat = Literal["json", "console"]

#: How a log hands its sink an event: (seconds since the log started, name, fields).
EventHandover = Callable[[float, str, Mapping[str, Any]], None]


@dataclass(frozen=True)
class LogIdentity:
    """What every event of one log carries, and how its lines are rendered: enough for
    another process to render them exactly as this one would."""

    run_id: str
    scenario: str
    instance: int | None
    log_format: LogFormat
    colours: bool
    epoch_started: float  # wall-clock seconds at `t` = 0


class EventRenderer:
    """One log's lines, rendered by structlog's processors: one that stamps each event with
    `ts` and `t` (envelope first), then structlog's JSONRenderer (orjson) or `ConsoleLines`.

    The processors are called as a bound logger would call them, with the log's envelope
    (`run_id`, `scenario`, `instance`) as its context, but without a bound logger around
    them: its dispatch (a copy of the context, a filtering method, a ReturnLogger) cost as
    much again as the rendering itself, 8.2 against 4.4 µs a line in the writer, where
    every event of a run is rendered (`bench/events.py`)."""

    def __init__(self, identity: LogIdentity) -> None:
        renderer: Any = (
            ConsoleLines(colours=identity.colours)
            if identity.log_format == "console"
            else structlog.processors.JSONRenderer(
                serializer=orjson.dumps,
                option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE,
                default=str,
            )
        )
        self._stamp = _Stamp(identity.epoch_started)
        self._renderer = renderer
        self._envelope = {
            "run_id": identity.run_id,
            "scenario": identity.scenario,
            "instance": identity.instance,
        }

    def render(self, elapsed: float, event: str, fields: Mapping[str, Any]) -> bytes:
        """The line of an event that happened `elapsed` seconds into the log, newline
        included."""
        event_dict = {**self._envelope, **fields, _ELAPSED: elapsed, "event": event}
        return as_bytes(self._renderer(None, "info", self._stamp(None, "info", event_dict)))


_ELAPSED = "_elapsed"  # how the elapsed time reaches the stamping processor


class _Stamp:
    """structlog processor: `ts` and `t` from the seconds since the log started, then the
    event's name and the envelope, then its fields (the order people read them in)."""

    def __init__(self, epoch_started: float) -> None:
        # Wall-clock time was read once; `ts` follows the monotonic clock from there, so `ts`
        # and `t` always agree (orjson renders the datetime itself).
        self.epoch_started = epoch_started

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> dict[str, Any]:
        elapsed = event_dict.pop(_ELAPSED)
        return {
            "ts": _from_timestamp(self.epoch_started + elapsed, dt.UTC),
            "t": int(elapsed * 1_000_000) / 1_000_000,
            "event": event_dict.pop("event"),
            **event_dict,
        }


class EventSink:
    """Writes rendered lines to several binary streams.

    A stream that fails (a closed pipe, a full disk) is dropped and remembered in
    `failed`; the others keep receiving lines. A reader that went away (EPIPE) is the
    ordinary end of a pipe (`loadsim run | head`); any other failure is the stream's own
    (`write_error`: a full disk, an I/O error), and fails the run.
    """

    def __init__(self, streams: Iterable[IO[bytes]]) -> None:
        self.streams = list(streams)
        self.failed: list[tuple[IO[bytes], OSError]] = []

    def msg(self, line: bytes | str) -> None:
        """Writes one whole line, newline included."""
        data = as_bytes(line)
        for stream in tuple(self.streams):
            try:
                stream.write(data)
            except OSError as error:
                self._drop(stream, error)

    def writer_for(self, log: EventLog) -> EventHandover:
        """How `log` hands this sink an event: here, rendered and written at once."""
        render, write = EventRenderer(log.identity).render, self.msg

        def hand_over(elapsed: float, event: str, fields: Mapping[str, Any]) -> None:
            write(render(elapsed, event, fields))

        return hand_over

    def flush(self) -> None:
        for stream in tuple(self.streams):
            try:
                stream.flush()
            except OSError as error:
                self._drop(stream, error)

    def close(self) -> None:
        self.flush()

    @property
    def write_error(self) -> tuple[IO[bytes], OSError] | None:
        """The first stream that failed of itself rather than because its reader went away."""
        return next(((s, e) for s, e in self.failed if e.errno != errno.EPIPE), None)

    def _drop(self, stream: IO[bytes], error: OSError) -> None:
        self.streams.remove(stream)
        self.failed.append((stream, error))


class EventLog:
    """The events of one run. `emit` is the only way an event leaves the run."""

    def __init__(
        self,
        sink: EventSink,
        *,
        run_id: str,
        scenario: str,
        instance: int | None = 0,
        log_format: LogFormat = "json",
        level: str = "info",
        started: float | None = None,
        colours: bool = False,
        kinds: frozenset[str] = EVENT_NAMES,
        epoch_started: float | None = None,
    ) -> None:
        self.sink = sink
        #: The events this log writes: those the level keeps, among the selected kinds.
        self.wanted = wanted_events(level) & kinds
        self.started = time.perf_counter() if started is None else started
        if epoch_started is None:  # wall-clock time at `t` = 0
            epoch_started = time.time() - (time.perf_counter() - self.started)
        self.identity = LogIdentity(run_id, scenario, instance, log_format, colours, epoch_started)
        self._hand_over = sink.writer_for(self)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def emit(self, event: str, **fields: Any) -> None:
        self.emit_fields(event, fields)

    def emit_fields(self, event: str, fields: Mapping[str, Any]) -> None:
        """`emit`, for a caller that already holds the fields in a dict (which it must not
        change afterwards: the writer process reads it when the batch is sent)."""
        if event in self.wanted:
            self._hand_over(time.perf_counter() - self.started, event, fields)
        elif event not in EVENT_NAMES:
            raise ValueError(f"unknown event name {event!r}")  # a bug, not a user error

    def flush(self) -> None:
        self.sink.flush()


def as_bytes(line: bytes | str) -> bytes:
    """A rendered line as bytes (the console renderer gives text)."""
    return line.encode() if isinstance(line, str) else line


def milliseconds(seconds: float) -> float:
    """Seconds as milliseconds to the microsecond, the precision of every `_ms` key
    (`round(x, 3)` costs ten times as much, and it runs several times a checkout)."""
    return int(seconds * 1_000_000) / 1000


_from_timestamp = dt.datetime.fromtimestamp


#: ANSI colours for `--log-format console`, by kind of event (first match wins).
_KIND_COLOURS = (
    ("client.timeout", "1;31"),
    ("client.error", "31"),
    ("leak", "1;33"),
    ("invalidate", "31"),
    ("detach", "31"),
    ("fault.", "1;35"),
    ("alert", "1;33"),
    ("connect", "32"),
    ("checkout", "36"),
    ("acquired", "36"),
    ("checkin", "34"),
    ("released", "34"),
    ("close", "35"),
    ("run.", "1"),
)


class ConsoleLines:
    """`--log-format console`: one line per event for people, its name coloured by kind
    (connect, checkout, checkin, close, invalidate, timeout, leak) on a terminal."""

    def __init__(self, colours: bool) -> None:
        self.colours = colours

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
        name = str(event_dict.get("event"))
        shown = f"{name:<24}"
        if self.colours:
            code = next((code for kind, code in _KIND_COLOURS if kind in name), None)
            if code is not None:
                shown = f"\x1b[{code}m{shown}\x1b[0m"
        skip = {"ts", "t", "event", "run_id", "instance"}
        details = " ".join(
            f"{key}={_console_value(value)}"
            for key, value in event_dict.items()
            if key not in skip and value is not None
        )
        return f"{event_dict.get('t', 0):9.3f}s {shown} {details}\n"


def _console_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else repr(value)
    return orjson.dumps(value, default=str).decode()
