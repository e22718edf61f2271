"""The event stream: its schema (a closed set of names) and how each event is rendered.

Every event is one flat JSON object on one line, rendered by structlog with orjson. Lines go
to stdout and, with `--output`, to a file as well. A run hands its events to the writer
process (`writer.py`), which renders them exactly as `EventLog.write_now` does here; the
runner sends what has gathered once a second and at the end, and only whole lines are ever
written.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import IO, Any, Literal, cast

import orjson
import structlog

from loadsim.config.selection import wanted_events
from loadsim.schema import EVENT_NAMES

LogFormat = Literal["json", "console"]


class EventSink:
    """A structlog logger that writes each rendered line to several binary streams.

    A stream that fails (a closed pipe, a full disk) is dropped and remembered in
    `failed`; the others keep receiving events.
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

    info = debug = warning = error = msg

    def writer_for(self, log: EventLog) -> EventHandover:
        """How `log` hands this sink an event: here, rendered and written at once."""
        return log.write_now

    def flush(self) -> None:
        for stream in tuple(self.streams):
            try:
                stream.flush()
            except OSError as error:
                self._drop(stream, error)

    def close(self) -> None:
        self.flush()

    def _drop(self, stream: IO[bytes], error: OSError) -> None:
        self.streams.remove(stream)
        self.failed.append((stream, error))


class EventLogger(structlog.BoundLoggerBase):
    """structlog's bound logger for the event stream, cut down to what the stream needs.

    Every checkout writes six events, so an event's cost is the instrumentation's cost. The
    stock and filtering bound loggers copy the bound context, merge the keywords into it and
    run a stamping processor that builds the dict again: about 8 µs an event, half of it
    that copying. Here the caller hands over the finished dict and `write` runs the
    processors (the renderer: orjson JSON, or `ConsoleLines`) and writes the line.
    """

    def write(self, event_dict: dict[str, Any]) -> None:
        self._logger.msg(self.render(event_dict))

    def render(self, event_dict: dict[str, Any]) -> bytes | str:
        rendered: Any = event_dict
        for processor in self._processors:
            rendered = processor(self._logger, "info", rendered)
        return cast(bytes | str, rendered)


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


class EventLog:
    """Writes the events of one run. `emit` is the only way an event leaves the process."""

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
        # Wall-clock time is read once; each event's `ts` follows the monotonic clock from
        # there, so `ts` and `t` always agree (orjson renders the datetime itself).
        if epoch_started is None:
            epoch_started = time.time() - (time.perf_counter() - self.started)
        self.identity = LogIdentity(run_id, scenario, instance, log_format, colours, epoch_started)
        renderer: Any = (
            ConsoleLines(colours=colours)
            if log_format == "console"
            else structlog.processors.JSONRenderer(serializer=_dumps)
        )
        self._logger: EventLogger = structlog.wrap_logger(
            sink, wrapper_class=EventLogger, processors=[renderer], context_class=dict
        ).bind(run_id=run_id, scenario=scenario, instance=instance)
        self._context = dict(self._logger._context)
        self._hand_over = sink.writer_for(self)

    @classmethod
    def replica(cls, sink: EventSink, identity: LogIdentity) -> EventLog:
        """A log that renders another process's events as that process would have."""
        return cls(
            sink,
            run_id=identity.run_id,
            scenario=identity.scenario,
            instance=identity.instance,
            log_format=identity.log_format,
            colours=identity.colours,
            epoch_started=identity.epoch_started,
        )

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

    def write_now(self, elapsed: float, event: str, fields: Mapping[str, Any]) -> None:
        """Renders an event that happened `elapsed` seconds into the log and writes it."""
        self._logger.write(self.event_dict(elapsed, event, fields))

    def render(self, elapsed: float, event: str, fields: Mapping[str, Any]) -> bytes | str:
        """The event's line, newline included, without writing it."""
        return self._logger.render(self.event_dict(elapsed, event, fields))

    def event_dict(self, elapsed: float, event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "ts": _from_timestamp(self.identity.epoch_started + elapsed, dt.UTC),
            "t": int(elapsed * 1_000_000) / 1_000_000,
            "event": event,
            **self._context,  # run_id, scenario, instance
            **fields,
        }

    def flush(self) -> None:
        self.sink.flush()


#: How a log hands its sink an event: (seconds since the log started, name, fields).
EventHandover = Callable[[float, str, Mapping[str, Any]], None]


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


def _dumps(value: Any, **_: Any) -> bytes:
    return orjson.dumps(value, default=str, option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE)
