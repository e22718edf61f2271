"""The event writer: a second process that renders the event stream and writes it.

Every checkout writes six events. Rendering one in the run's own process (a dict, a
timestamp, orjson, a buffered write) costs its event loop about 5 µs, and more again in what
it evicts from the CPU's caches: writing every event cost a `SELECT 1` workload a quarter of
its throughput. So a run only appends each event's bare fields to a batch; the batch goes
down a pipe to this process, marshalled in one call, and is rendered here exactly as the run
would have rendered it (`EventRenderer`), on the machine's other core. An event's fields
are read when its batch is sent (within a second): callers pass values they do not change.

The writer inherits the run's stdout and `--output` file. It runs in a session of its own
and ignores SIGINT and SIGTERM, so a Ctrl-C is the run's alone to handle: the writer stops
when the run closes the pipe, after writing everything it was sent, so the stream ends on a
whole line even when the run is killed. A stream that fails (a reader gone, a full disk) is
reported back on a status pipe and dropped; the others go on.

    python -m loadsim.run.writer STATUS_FD STREAM_FD...   (started by EventWriter, not by people)
"""

from __future__ import annotations

import contextlib
import fcntl
import marshal
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import astuple
from typing import IO, Any

from loadsim.run.events import (
    EventHandover,
    EventLog,
    EventRenderer,
    EventSink,
    LogIdentity,
    as_bytes,
)

#: Items are tuples whose first element says what they are: a log's key (>= 0) for one of
#: its events, or one of these.
_LINE = -1  # (_LINE, a finished line)
_LOG = -2  # (_LOG, key, LogIdentity as a tuple): a log starts
#: Events gathered before the batch goes down the pipe (the runner also sends once a second).
BATCH_EVENTS = 512
_FRAME_HEADER = 4  # the payload's size


class EventWriter(EventSink):
    """An EventSink whose rendering and writing happen in a writer process."""

    def __init__(self, streams: Sequence[IO[bytes]]) -> None:
        super().__init__(streams)
        for stream in streams:
            stream.flush()  # anything written before the writer existed goes first
        self._fds = {stream.fileno(): stream for stream in streams}
        status_read, status_write = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "loadsim.run.writer", str(status_write), *map(str, self._fds)],
            stdin=subprocess.PIPE,
            pass_fds=(status_write, *self._fds),
            start_new_session=True,  # a Ctrl-C at the terminal is the run's to handle
        )
        os.close(status_write)
        os.set_blocking(status_read, False)
        self._status = status_read
        assert self._process.stdin is not None
        self._pipe: IO[bytes] = self._process.stdin
        with contextlib.suppress(AttributeError, OSError):  # Linux: room for bursts
            fcntl.fcntl(self._pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
        self._items: list[tuple[Any, ...]] = []
        self._identities: dict[int, LogIdentity] = {}

    def writer_for(self, log: EventLog) -> EventHandover:
        key = len(self._identities)
        self._identities[key] = log.identity
        self._items.append((_LOG, key, astuple(log.identity)))
        items = self._items

        def hand_over(elapsed: float, event: str, fields: Mapping[str, Any]) -> None:
            items.append((key, elapsed, event, fields))
            if len(items) >= BATCH_EVENTS:
                self._send()

        return hand_over

    def msg(self, line: bytes | str) -> None:
        self._items.append((_LINE, as_bytes(line)))
        if len(self._items) >= BATCH_EVENTS:
            self._send()

    def flush(self) -> None:
        """Sends what has gathered; the writer writes and flushes each batch at once."""
        self._send()
        self._read_status()

    def close(self, timeout: float = 10.0) -> None:
        """Sends the rest and waits for the writer to have written everything."""
        if self._pipe.closed:
            return
        self._send()
        with contextlib.suppress(OSError):
            self._pipe.close()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._read_status()
        os.close(self._status)

    def _send(self) -> None:
        if not self._items or not self.streams or self._pipe.closed:
            self._items.clear()
            return
        try:
            payload = marshal.dumps(self._items)
        except ValueError:  # a value marshal cannot carry: render those events here
            payload = marshal.dumps([self._marshallable(item) for item in self._items])
        header = len(payload).to_bytes(_FRAME_HEADER, "big")
        self._items.clear()
        try:
            self._pipe.write(header + payload)
            self._pipe.flush()
        except OSError as error:  # the writer is gone: nothing more can be written
            for stream in tuple(self.streams):
                self._drop(stream, error)

    def _marshallable(self, item: tuple[Any, ...]) -> tuple[Any, ...]:
        try:
            marshal.dumps(item)
        except ValueError:
            key, elapsed, event, fields = item
            line = EventRenderer(self._identities[key]).render(elapsed, event, fields)
            return (_LINE, line)
        return item

    def _read_status(self) -> None:
        """Drops the streams the writer reported as failed ("fd errno message" lines)."""
        try:
            report = os.read(self._status, 65536)
        except BlockingIOError:
            return
        for line in report.decode(errors="replace").splitlines():
            fd, errno, message = line.split(" ", 2)
            stream = self._fds.get(int(fd))
            if stream is not None and stream in self.streams:
                self._drop(stream, OSError(int(errno), message))


class _ReportingSink(EventSink):
    """The writer's own sink: reports each stream it drops on the status pipe."""

    def __init__(self, streams: Sequence[IO[bytes]], status: int) -> None:
        super().__init__(streams)
        self._status = status

    def _drop(self, stream: IO[bytes], error: OSError) -> None:
        super()._drop(stream, error)
        message = str(error.strerror or error).replace("\n", " ")
        with contextlib.suppress(OSError):
            os.write(self._status, f"{stream.fileno()} {error.errno or 0} {message}\n".encode())


def serve(source: IO[bytes], sink: EventSink) -> None:
    """Renders and writes every whole batch that arrives, until the pipe closes."""
    renderers: dict[int, EventRenderer] = {}
    while True:
        header = source.read(_FRAME_HEADER)
        if len(header) < _FRAME_HEADER:
            break
        size = int.from_bytes(header, "big")
        payload = source.read(size)
        if len(payload) < size:
            break  # the run died while sending: a partial batch is never written
        for item in marshal.loads(payload):
            kind = item[0]
            if kind >= 0:
                sink.msg(renderers[kind].render(item[1], item[2], item[3]))
            elif kind == _LINE:
                sink.msg(item[1])
            else:
                renderers[item[1]] = EventRenderer(LogIdentity(*item[2]))
        sink.flush()
        if not sink.streams:
            break


def main(arguments: list[str]) -> None:
    # Yield the CPU to the run and to the server: the pipe holds what is not yet written,
    # and the writer catches up whenever a core is idle.
    os.nice(10)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    status, *fds = (int(argument) for argument in arguments)
    streams = [open(fd, "wb", buffering=1 << 16, closefd=False) for fd in fds]  # noqa: SIM115
    sink = _ReportingSink(streams, status)
    serve(sys.stdin.buffer, sink)
    sink.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
