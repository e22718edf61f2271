"""The event writer: a second process that renders the event stream and writes it.

Every checkout writes two events (six with `--events all`). Rendering one in the run's own
process (a dict, a timestamp, orjson, a buffered write) costs its event loop about 5 µs, and
more again in what it evicts from the CPU's caches: writing six events a checkout cost a
`SELECT 1` workload a quarter of its throughput. So a run only appends each event's bare
fields to a batch; the batch goes down a pipe to this process, marshalled in one call, and is
rendered here exactly as the run would have rendered it (`EventRenderer`), on the machine's
other core. An event's fields are read when its batch is sent (within a second): callers
pass values they do not change.

The writer inherits the run's stdout and `--output` file. It runs in a session of its own
and ignores SIGINT and SIGTERM, so a Ctrl-C is the run's alone to handle. What a stream
does never holds up another, nor the run:

- A regular file is written at once, batch by batch, and keeps every line. A write that
  fails (a full disk, an I/O error) cuts the file back to its last whole line.
- A pipe, a terminal or a device is written by a thread of its own, in whole lines: to a
  pipe, only as much as the pipe has room for, so that a reader who stops reading never
  finds half a line, whenever the writer stops. Up to `READER_BACKLOG` bytes wait for a
  reader who has stopped reading; lines beyond that are dropped for it, and counted.
- The run's pipe to the writer is non-blocking: when the writer falls behind, the run keeps
  up to `RUN_BACKLOG` bytes itself, then waits for it, but never longer than
  `SEND_PATIENCE_S` without progress.

At the end the run sends `_END` and waits for the writer, for as long as it likes
(`EventWriter.close(patience)`), then closes the pipe: the writer gives its readers
`HURRY_S` more and leaves. What a reader has not taken by then is lost, and counted. A run
that is killed closes the pipe too: every whole batch it sent is still written.

A stream that fails is reported on a status pipe ("FD error ERRNO MESSAGE"), as are the
lines a reader did not take ("FD lost COUNT"); the run drops the failed stream (`failed`),
and tells a failure of the stream itself (`write_error`) from a reader that went away.

    python -m loadsim.run.writer STATUS_FD STREAM_FD[:replace]...   (started by EventWriter)

`:replace`: an existing file given with --force, emptied when its first line is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import marshal
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
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
_END = -3  # (_END,): the run has sent everything
#: Events gathered before the batch goes down the pipe (the runner also sends once a second).
BATCH_EVENTS = 512
_FRAME_HEADER = 4  # the payload's size

#: What the run keeps itself, beyond what the pipe holds, before it waits for the writer.
RUN_BACKLOG = 4 << 20
#: How long the run waits for a writer that makes no progress at all (stuck on a file):
#: then it goes on, keeping what it sends, so that a Ctrl-C is always heard.
SEND_PATIENCE_S = 0.5
#: Once the run has closed the pipe, how long its readers get to take what waits for them.
HURRY_S = 0.5
#: What waits for one reader who is not reading before lines are dropped for it.
READER_BACKLOG = 64 << 20
#: How long the run waits for the writer to leave once it has been told to hurry.
_EXIT_GRACE_S = HURRY_S + 5.0

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _default_warning(message: str) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(f"loadsim: warning: {message}", file=sys.stderr)


class EventWriter(EventSink):
    """An EventSink whose rendering and writing happen in a writer process.

    `names`: how messages name each stream (default: its file name, "stdout" for stdout);
    `replace`: existing files (given with --force) to empty when their first line is
    written; `warn`: where the lines a reader did not take are reported, at `close`.
    """

    def __init__(
        self,
        streams: Sequence[IO[bytes]],
        *,
        names: Sequence[str] | None = None,
        replace: Collection[IO[bytes]] = (),
        warn: Callable[[str], None] = _default_warning,
    ) -> None:
        super().__init__(streams)
        for stream in streams:
            stream.flush()  # anything written before the writer existed goes first
        self.names = dict(zip(streams, names or [_name_of(s) for s in streams], strict=True))
        self._fds = {stream.fileno(): stream for stream in streams}
        self._files = {stream for stream in streams if _is_file(stream.fileno())}
        status_read, status_write = os.pipe()
        specs = [
            f"{fd}:replace" if any(stream is kept for kept in replace) else str(fd)
            for fd, stream in self._fds.items()
        ]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "loadsim.run.writer", str(status_write), *specs],
            stdin=subprocess.PIPE,
            pass_fds=(status_write, *self._fds),
            start_new_session=True,  # a Ctrl-C at the terminal is the run's to handle
        )
        os.close(status_write)
        os.set_blocking(status_read, False)
        self._status = status_read
        self._status_text = b""
        assert self._process.stdin is not None
        self._pipe: IO[bytes] = self._process.stdin
        self._fd = self._pipe.fileno()
        os.set_blocking(self._fd, False)  # the run never waits on it unawares
        with contextlib.suppress(AttributeError, OSError):  # Linux: room for bursts
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        self._items: list[tuple[Any, ...]] = []
        self._identities: dict[int, LogIdentity] = {}
        #: Frames sent but not yet in the pipe: [what is left of each, its events].
        self._unsent: deque[list[Any]] = deque()
        self._unsent_bytes = 0
        self._stuck = False  # the writer made no progress while we waited
        self._closed = False
        self._warn = warn
        #: Lines the writer could not write to a stream whose reader was not reading.
        self.lost: dict[IO[bytes], int] = {}
        #: Events the writer never received (it was stuck when the run ended).
        self.unsent_events = 0
        #: A Ctrl-C ended `close`'s wait for a reader.
        self.interrupted = False

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
        """Sends what has gathered; the writer writes each batch as it arrives."""
        self._send()
        self._write_unsent(keep=None)
        self._read_status()

    def close(self, patience: float | None = 0.0) -> None:
        """Sends the rest and waits for the writer: it writes everything to files, and
        gives a reader who is not reading `patience` seconds (None: as long as it takes,
        unless a Ctrl-C ends the wait), then `HURRY_S` more. The lines such a reader did
        not take are counted in `lost` and reported by `warn`."""
        if self._closed:
            return
        self._send()
        self._closed = True
        try:
            self._queue([(_END,)], 0)
            self._write_unsent(keep=0)
            self._process.wait(patience)
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt:
            self.interrupted = True  # stop waiting for the reader
        self.unsent_events = sum(events for _, events in self._unsent)
        self._unsent.clear()
        with contextlib.suppress(OSError):
            self._pipe.close()  # the writer's sign to hurry
        try:
            self._process.wait(_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._read_status(to_the_end=True)
        os.close(self._status)
        self._report_losses()

    # ------------------------------------------------------------------- sending

    def _send(self) -> None:
        if not self._items or not self.streams or self._closed:
            self._items.clear()
            return
        try:
            payload = marshal.dumps(self._items)
        except ValueError:  # a value marshal cannot carry: render those events here
            payload = marshal.dumps([self._marshallable(item) for item in self._items])
        events = len(self._items)
        self._items.clear()
        self._frame(payload, events)
        self._write_unsent(keep=RUN_BACKLOG)

    def _queue(self, items: list[tuple[Any, ...]], events: int) -> None:
        self._frame(marshal.dumps(items), events)

    def _frame(self, payload: bytes, events: int) -> None:
        frame = len(payload).to_bytes(_FRAME_HEADER, "big") + payload
        self._unsent.append([memoryview(frame), events])
        self._unsent_bytes += len(frame)

    def _write_unsent(self, keep: int | None) -> None:
        """Puts what the pipe takes into it. While more than `keep` bytes are left (None:
        never), waits for the writer to take them, unless it makes no progress at all for
        `SEND_PATIENCE_S`: then the run goes on and keeps them."""
        while self._unsent:
            frame = self._unsent[0]
            try:
                written = os.write(self._fd, frame[0])
            except BlockingIOError:
                if keep is None or self._unsent_bytes <= keep or self._stuck:
                    return
                if not _writable(self._fd, SEND_PATIENCE_S):
                    self._stuck = True
                    return
                continue
            except OSError as error:  # the writer is gone: nothing more can be written
                self._unsent.clear()
                self._unsent_bytes = 0
                self._read_status(to_the_end=True)  # what it said before it went
                for stream in tuple(self.streams):
                    self._drop(stream, error)
                return
            self._stuck = False
            self._unsent_bytes -= written
            if written == len(frame[0]):
                self._unsent.popleft()
            else:
                frame[0] = frame[0][written:]

    def _marshallable(self, item: tuple[Any, ...]) -> tuple[Any, ...]:
        try:
            marshal.dumps(item)
        except ValueError:
            key, elapsed, event, fields = item
            line = EventRenderer(self._identities[key]).render(elapsed, event, fields)
            return (_LINE, line)
        return item

    # -------------------------------------------------------------- what it says

    def _read_status(self, to_the_end: bool = False) -> None:
        """Drops the streams the writer reported as failed, and counts the lines it could
        not write ("FD error ERRNO MESSAGE", "FD lost COUNT"). `to_the_end`: until the
        writer has gone."""
        if to_the_end:
            with contextlib.suppress(OSError):
                os.set_blocking(self._status, True)
        while True:
            try:
                data = os.read(self._status, 65536)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self._status_text += data
        *lines, self._status_text = self._status_text.split(b"\n")
        for line in lines:
            fd, kind, detail = line.decode(errors="replace").split(" ", 2)
            stream = self._fds.get(int(fd))
            if stream is None:
                continue
            if kind == "lost":
                self.lost[stream] = self.lost.get(stream, 0) + int(detail)
            elif stream in self.streams:
                number, message = detail.split(" ", 1)
                self._drop(stream, OSError(int(number), message))

    def _report_losses(self) -> None:
        kept = [
            self.names[stream]
            for stream in self._files
            if stream in self.streams and stream not in self.lost
        ]
        where = f"; {' and '.join(kept)} {'has' if len(kept) == 1 else 'have'} them all"
        for stream, count in self.lost.items():
            self._warn(
                f"{_events(count)} were not written to {self.names[stream]}: its reader was "
                f"not reading{where if kept else ''}"
            )
        if self.unsent_events:
            self._warn(f"{_events(self.unsent_events)} were not written: the writer was stuck")


def _events(count: int) -> str:
    return f"{count} event{'s' if count != 1 else ''} (line{'s' if count != 1 else ''})"


def _name_of(stream: IO[bytes]) -> str:
    name = getattr(stream, "name", None)
    if name == "<stdout>" or stream.fileno() == 1:
        return "stdout"
    return str(name) if isinstance(name, str) else f"file descriptor {stream.fileno()}"


def _is_file(fd: int) -> bool:
    """A regular file (or a block device): written at once, never waited for."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISREG(mode) or stat.S_ISBLK(mode)


def _writable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(timeout * 1000))


# ------------------------------------------------------------ the writer process


def _report(status: int, fd: int, kind: str, detail: str) -> bool:
    """Tells the run; False when it has gone."""
    try:
        os.write(status, f"{fd} {kind} {detail}\n".encode())
    except OSError:
        return False
    return True


def _report_error(status: int, fd: int, error: OSError) -> None:
    message = str(error.strerror or error).replace("\n", " ")
    _report(status, fd, "error", f"{error.errno or 0} {message}")


class _File:
    """A regular file: written at once, in the writer's main thread, and never waited for."""

    def __init__(self, fd: int, status: int, replace: bool) -> None:
        self.fd = fd
        self.status = status
        self.replace = replace and stat.S_ISREG(os.fstat(fd).st_mode)
        self.failed = False

    def put(self, chunk: bytes, lines: int) -> None:
        if self.failed:
            return
        view, written = memoryview(chunk), 0
        try:
            if self.replace:  # its old content goes only now that the run writes
                self.replace = False
                os.ftruncate(self.fd, 0)
            while written < len(chunk):
                written += os.write(self.fd, view[written:])
        except OSError as error:
            self.failed = True
            self._cut(chunk, written)
            _report_error(self.status, self.fd, error)

    def _cut(self, chunk: bytes, written: int) -> None:
        """After a failed write: the file ends with its last whole line."""
        partial = written - (chunk.rfind(b"\n", 0, written) + 1)
        if partial:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, os.lseek(self.fd, 0, os.SEEK_CUR) - partial)

    def end(self) -> None:
        pass


class _Abandoned(Exception):
    """The writer is leaving: what is not written stays unwritten."""


class _Reader:
    """A pipe, a terminal, a socket or a device: written by a thread of its own, so that a
    reader who stops reading holds up nothing else. To a pipe it writes only what the pipe
    has room for, cut at the end of a line: a pipe never holds half a line of ours."""

    def __init__(self, fd: int, status: int) -> None:
        self.fd = fd
        self.status = status
        self.capacity: int | None = None
        with contextlib.suppress(OSError):
            self.capacity = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        self.failed = False
        self.abandoned = False
        self.dropped = 0  # lines beyond READER_BACKLOG, never queued
        self._queue: deque[tuple[bytes, int]] = deque()
        self._queued = 0
        self._current = b""
        self._position = 0  # of _current, written
        self._ending = False
        self._changed = threading.Condition()
        self._poller = select.poll()
        self._poller.register(fd, select.POLLOUT)
        self.thread = threading.Thread(target=self._run, name=f"fd {fd}", daemon=True)
        self.thread.start()

    def put(self, chunk: bytes, lines: int) -> None:
        with self._changed:
            if self.failed:
                return
            if self._queued + len(chunk) > READER_BACKLOG:
                self.dropped += lines
                return
            self._queue.append((chunk, lines))
            self._queued += len(chunk)
            self._changed.notify()

    def end(self) -> None:
        """Nothing more comes: the thread ends once everything is written."""
        with self._changed:
            self._ending = True
            self._changed.notify()

    def unwritten(self) -> int:
        """The lines it has not written (to a reader that is still there), as it gives up."""
        self.abandoned = True
        with self._changed:
            if self.failed:
                return 0
            waiting = sum(lines for _, lines in self._queue)
            return self.dropped + waiting + self._current.count(b"\n", self._position)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._ending:
                    self._changed.wait()
                if not self._queue:
                    return
                chunk, _ = self._queue.popleft()
                self._queued -= len(chunk)
                self._current, self._position = chunk, 0
            try:
                self._write(chunk)
            except _Abandoned:
                return
            except OSError as error:
                with self._changed:
                    self.failed = True
                    self._queue.clear()
                _report_error(self.status, self.fd, error)
                return
            with self._changed:
                self._current = b""

    def _write(self, chunk: bytes) -> None:
        view, size, position = memoryview(chunk), len(chunk), 0
        while position < size:
            end = size
            if self.capacity is not None:  # a pipe: as many whole lines as it has room for
                room = self._room()
                if size - position > room:
                    end = chunk.rfind(b"\n", position, position + room) + 1
                    if end <= position:  # not even one line fits
                        line_end = chunk.find(b"\n", position) + 1 or size
                        if line_end - position <= self.capacity - _PAGE and self._wait_for_room():
                            continue
                        end = line_end  # a line the pipe never has room for, or no reader
            if self.abandoned:
                raise _Abandoned
            position += os.write(self.fd, view[position:end])
            self._position = position

    def _room(self) -> int:
        """Bytes the pipe surely takes at once: its free pages, less one for a page the
        reader has begun (a pipe holds whole pages)."""
        assert self.capacity is not None
        try:
            unread: int = struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0" * 4))[0]
        except OSError:
            return self.capacity
        pages = self.capacity // _PAGE - (unread + _PAGE - 1) // _PAGE - 1
        return max(pages, 0) * _PAGE

    def _wait_for_room(self) -> bool:
        """Waits a little for the reader; False when it has gone (a write will say so)."""
        ready = self._poller.poll(100)
        if any(mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, mask in ready):
            return False
        if ready:
            time.sleep(0.002)  # a page is free, but not yet enough of them
        if self.abandoned:
            raise _Abandoned
        return True


_Output = _File | _Reader


def serve(source: IO[bytes], outputs: Sequence[_Output]) -> bool:
    """Renders every whole batch that arrives and hands it to the outputs, until the run
    says it has sent everything (True) or the pipe closes (False)."""
    renderers: dict[int, EventRenderer] = {}
    while True:
        header = source.read(_FRAME_HEADER)
        if len(header) < _FRAME_HEADER:
            return False
        size = int.from_bytes(header, "big")
        payload = source.read(size)
        if len(payload) < size:
            return False  # the run died while sending: a partial batch is never written
        lines: list[bytes] = []
        ended = False
        live = [output for output in outputs if not output.failed]
        for item in marshal.loads(payload):
            kind = item[0]
            if kind >= 0:
                if live:
                    lines.append(renderers[kind].render(item[1], item[2], item[3]))
            elif kind == _LINE:
                lines.append(item[1])
            elif kind == _LOG:
                renderers[item[1]] = EventRenderer(LogIdentity(*item[2]))
            else:
                ended = True
        if lines and live:
            chunk = b"".join(lines)
            for output in live:
                output.put(chunk, len(lines))
        if ended:
            return True


def finish(source: IO[bytes], outputs: Sequence[_Output], status: int, ended: bool) -> bool:
    """Waits for the readers: until they have taken everything, or, once the run closes
    the pipe (at once if it has), `HURRY_S` more. Reports what each did not take; True
    when every thread is done."""
    readers = [output for output in outputs if isinstance(output, _Reader)]
    for output in outputs:
        output.end()
    if ended:
        while any(reader.thread.is_alive() for reader in readers):
            if select.select([source], [], [], 0.02)[0]:
                break  # the run closed the pipe: hurry
    deadline = time.monotonic() + HURRY_S
    for reader in readers:
        reader.thread.join(max(0.0, deadline - time.monotonic()))
    for reader in readers:
        count = reader.unwritten()
        if count and not _report(status, reader.fd, "lost", str(count)):
            # The run has gone (a second Ctrl-C): nobody else can say it.
            name = "stdout" if reader.fd == 1 else f"file descriptor {reader.fd}"
            with contextlib.suppress(OSError):
                os.write(
                    2,
                    f"loadsim: warning: {_events(count)} were not written to {name}: "
                    "its reader was not reading\n".encode(),
                )
    return not any(reader.thread.is_alive() for reader in readers)


def main(arguments: list[str]) -> None:
    # Yield the CPU to the run and to the server: the pipe holds what is not yet written,
    # and the writer catches up whenever a core is idle.
    os.nice(10)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.setswitchinterval(0.001)  # a reader's thread gets its turn soon after the pipe drains
    status, *specs = arguments
    outputs: list[_Output] = []
    for spec in specs:
        fd_text, _, option = spec.partition(":")
        fd = int(fd_text)
        if _is_file(fd):
            outputs.append(_File(fd, int(status), replace=option == "replace"))
        else:
            outputs.append(_Reader(fd, int(status)))
    source = sys.stdin.buffer
    ended = serve(source, outputs)
    if not finish(source, outputs, int(status), ended):
        os._exit(0)  # a reader's thread is stuck in a write that will never complete


if __name__ == "__main__":
    main(sys.argv[1:])
