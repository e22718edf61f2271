"""The event writer process: it must write exactly what the run would have written itself,
drop only the streams that fail, and never leave a partial line behind."""

from __future__ import annotations

import enum
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadsim.run.events import EventLog, EventSink
from loadsim.run.writer import BATCH_EVENTS, EventWriter

EPOCH = 1_790_000_000.0  # a fixed wall clock, so that both sides stamp the same `ts`


class Colour(enum.IntEnum):  # marshal cannot carry an IntEnum: the writer must cope
    RED = 1


def _events() -> list[tuple[float, str, dict[str, Any]]]:
    return [
        (0.001, "run.start", {"pool": {"pool_size": 5}, "groups": [{"name": "main"}]}),
        (0.5, "pool.checkout", {"conn": 3, "client": 17, "connections_used": 1}),
        (0.75, "client.error", {"client": 2, "message": 'ünïcode "quoted"\n'}),
        (1.25, "monitor.alert", {"kind": Colour.RED, "path": Path("/tmp/x")}),
        (2.0, "run.end", {"summary": {"checkouts": 1, "rate": 0.5, "none": None}}),
    ]


def _log(sink: EventSink, log_format: str = "json") -> EventLog:
    return EventLog(
        sink,
        run_id="r1",
        scenario="s",
        instance=0,
        log_format=log_format,  # type: ignore[arg-type]
        epoch_started=EPOCH,
    )


def test_the_writer_writes_what_the_run_would_have_written(tmp_path: Path) -> None:
    for log_format in ("json", "console"):
        expected = io.BytesIO()
        local = _log(EventSink([expected]), log_format)
        path = tmp_path / f"{log_format}.out"
        with path.open("wb") as file:
            writer = EventWriter([file])
            remote = _log(writer, log_format)
            for elapsed, event, fields in _events():
                local._hand_over(elapsed, event, fields)
                remote._hand_over(elapsed, event, fields)
            writer.close()
        assert path.read_bytes() == expected.getvalue()
        assert writer.failed == []
    lines = (tmp_path / "json.out").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == [e[1] for e in _events()]
    assert json.loads(lines[3])["kind"] == 1  # rendered here, in order, not lost


def test_batches_larger_than_one_send_arrive_whole_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "many.out"
    count = BATCH_EVENTS * 3 + 7
    with path.open("wb") as file:
        writer = EventWriter([file])
        log = _log(writer)
        for index in range(count):
            log.emit("client.waiting", client=index)
            if index == BATCH_EVENTS // 2:
                writer.msg(b'{"event":"relayed"}\n')  # a finished line, as a fleet relays
        writer.close()
        for index in range(BATCH_EVENTS * 2):  # the stream has ended: nothing more is written
            log.emit("client.waiting", client=index)
        writer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    clients = [line["client"] for line in lines if line["event"] == "client.waiting"]
    assert clients == list(range(count))
    assert lines[BATCH_EVENTS // 2 + 1] == {"event": "relayed"}


def test_a_stream_that_fails_is_dropped_and_the_others_go_on(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    pipe = os.fdopen(write_end, "wb")
    os.close(read_end)  # nobody will ever read: writing fails with EPIPE
    path = tmp_path / "kept.out"
    with path.open("wb") as file:
        writer = EventWriter([pipe, file])
        log = _log(writer)
        for index in range(100):
            log.emit("client.waiting", client=index)
        writer.flush()
        deadline = time.monotonic() + 10
        while pipe in writer.streams and time.monotonic() < deadline:
            time.sleep(0.05)
            writer.flush()
        assert writer.streams == [file]
        assert [stream for stream, _ in writer.failed] == [pipe]
        log.emit("client.waiting", client=100)
        writer.close()
    pipe.close()
    assert len(path.read_text().splitlines()) == 101


def test_the_writer_outlives_ctrl_c_and_a_killed_run_leaves_whole_lines(tmp_path: Path) -> None:
    """The run sends two batches, the process group gets SIGINT (the writer must ignore it),
    and the run is SIGKILLed with a third batch half-built: every line sent is written,
    and nothing else."""
    path = tmp_path / "killed.out"
    script = f"""
import os, signal, sys, time
from loadsim.run.events import EventLog
from loadsim.run.writer import EventWriter
file = open({str(path)!r}, "wb")
writer = EventWriter([file])
signal.signal(signal.SIGINT, signal.SIG_IGN)  # this process lives on to be killed
log = EventLog(writer, run_id="r", scenario="s")
for index in range(1000):
    log.emit("client.waiting", client=index)
writer.flush()
os.killpg(os.getpgid(0), signal.SIGINT)
time.sleep(0.2)
for index in range(1000, 1010):
    log.emit("client.waiting", client=index)
os.kill(os.getpid(), signal.SIGKILL)
"""
    process = subprocess.run(
        [sys.executable, "-c", script],
        start_new_session=True,  # its own process group, for the SIGINT
        capture_output=True,
        timeout=60,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    deadline = time.monotonic() + 10  # the writer finishes on its own after the run is gone
    while time.monotonic() < deadline:
        text = path.read_text()
        if text.count("\n") >= 1000:
            break
        time.sleep(0.05)
    time.sleep(0.2)
    text = path.read_text()
    assert text.endswith("\n")
    clients = [json.loads(line)["client"] for line in text.splitlines()]
    assert clients == list(range(1000))
