"""When the event stream cannot be written as it comes: a reader who stops reading, a full
disk, a run that fails before it writes, standard streams that are closed, a terminal whose
encoding cannot carry a scenario's name.

A reader who stops reading holds up neither the run, nor its stop (Ctrl-C is honoured within
two seconds), nor the `--output` file, which keeps every event; what the reader did not take
is counted on stderr, and every line it does get is whole. A write that fails of itself (a
full disk, a file too large: anything but EPIPE) stops the run with exit 2 and one line
naming the stream and the errno; the file ends with its last whole line. A failed run leaves
no empty `--output` behind and no `--force`d file emptied. Through the real command, against
a real server; the writer's own guarantees in process, against real pipes and files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from loadsim.run.events import EventLog
from loadsim.run.writer import HURRY_S, EventWriter
from tests.helpers import (
    RunLoadsim,
    by_name,
    clean_environment,
    loadsim_command,
    parse_events,
    start_loadsim,
    wait_for_start,
    write_scenarios,
)

#: Nothing listens on port 1: a run fails at once, with exit 3, before it writes an event.
UNREACHABLE_URL = "postgresql://someone@127.0.0.1:1/db"
#: How long a stop may take: the README promises about two seconds; a little room for a
#: machine shared with other work.
STOP_BOUND_S = 3.0
LOST = re.compile(r"loadsim: warning: (\d+) events? \(lines?\) were not written to stdout")


def lost_count(stderr: str) -> int:
    """The number of lines stderr says stdout's reader did not get (0 when it says none)."""
    found = LOST.findall(stderr)
    assert len(found) <= 1, stderr
    return int(found[0]) if found else 0


def whole_lines(data: bytes) -> list[str]:
    """Every line of a stream, which must each be whole (JSON, newline-terminated)."""
    text = data.decode()
    assert text == "" or text.endswith("\n"), f"a partial last line: {text[-200:]!r}"
    return text.splitlines()


def busy_run(database_url: str, output: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A run of 20 clients on a pool of 5 (some 1,500 events a second), writing --output."""
    return start_loadsim(
        "run",
        "normal",
        "--clients",
        "20",
        "--database-url",
        database_url,
        "--output",
        str(output),
        "-q",
        *extra,
        cwd=output.parent,
        text=False,
    )


# ------------------------------------------------------- a reader who stops reading


def test_ctrl_c_is_honoured_whatever_a_stalled_reader_does(
    database_url: str, tmp_path: Path
) -> None:
    """`loadsim run | (sleep 20; cat)` and a Ctrl-C: it stops within two seconds; the file
    kept growing while stdout was full, and has every event; the reader, reading at last,
    gets whole lines; stderr counts the rest."""
    output = tmp_path / "run.jsonl"
    process = busy_run(database_url, output, "--duration", "60s")
    first = wait_for_start(process)  # type: ignore[arg-type]
    time.sleep(2)  # the pipe to the reader is full long before this
    size_then = output.stat().st_size
    time.sleep(1)
    assert output.stat().st_size > size_then, "the file stalled with stdout"
    process.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    code = process.wait(timeout=30)
    took = time.monotonic() - stopped
    assert process.stdout is not None and process.stderr is not None
    rest, stderr = process.stdout.read(), process.stderr.read().decode()
    assert code == 130, stderr
    assert took < STOP_BOUND_S, f"took {took:.1f}s to stop"
    assert "Traceback" not in stderr
    read = parse_events("\n".join([first.rstrip("\n"), *whole_lines(rest)]) + "\n")
    kept = parse_events(output.read_text())
    assert kept[-1]["event"] == "run.end" and kept[-1]["summary"]["interrupted"] is True
    assert read == kept[: len(read)]  # what the reader got is the start of the stream
    assert len(read) + lost_count(stderr) == len(kept), stderr
    assert lost_count(stderr) > 0


def test_a_run_that_ends_on_its_own_waits_for_its_reader(database_url: str, tmp_path: Path) -> None:
    """A reader who reads only after the run is over still gets every event."""
    output = tmp_path / "run.jsonl"
    process = busy_run(database_url, output, "--duration", "1s")
    first = wait_for_start(process)  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while b'"run.end"' not in output.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    assert process.poll() is None  # still there, waiting for the reader
    rest, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr.decode()
    assert lost_count(stderr.decode()) == 0
    assert first.encode() + rest == output.read_bytes()


def test_ctrl_c_while_the_run_waits_for_its_reader(database_url: str, tmp_path: Path) -> None:
    """The run is over, the reader is not reading: a Ctrl-C ends the wait at once."""
    output = tmp_path / "run.jsonl"
    process = busy_run(database_url, output, "--duration", "1s")
    wait_for_start(process)  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while b'"run.end"' not in output.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    code = process.wait(timeout=30)
    took = time.monotonic() - stopped
    time.sleep(2 * HURRY_S)  # the reader goes on not reading while the writer gives up
    assert process.stdout is not None and process.stderr is not None
    rest, stderr = process.stdout.read(), process.stderr.read().decode()
    assert code == 130, stderr
    assert took < STOP_BOUND_S, f"took {took:.1f}s to stop"
    assert "Traceback" not in stderr
    whole_lines(rest)
    assert lost_count(stderr) > 0
    assert parse_events(output.read_text())[-1]["event"] == "run.end"


def _stalled_pipe() -> tuple[int, IO[bytes]]:
    """A pipe and its write end; nobody reads the other end (until the test does)."""
    read_end, write_end = os.pipe()
    return read_end, os.fdopen(write_end, "wb")


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def unblock_after() -> Iterator[list[int]]:
    """Pipes to read (and so unblock) after 20 s: a writer that blocks on a reader makes its
    test fail, slowly, instead of hanging."""
    pipes: list[int] = []
    done = threading.Event()

    def drain() -> None:
        if done.wait(20):
            return
        for fd in pipes:
            os.set_blocking(fd, False)
        while not done.wait(0.01):  # until the test ends (what is read is lost to it)
            for fd in pipes:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(fd, 1 << 20)

    watchdog = threading.Thread(target=drain, daemon=True)
    watchdog.start()
    yield pipes
    done.set()
    watchdog.join()


def test_the_writer_writes_the_file_while_a_pipe_is_full(
    tmp_path: Path, unblock_after: list[int]
) -> None:
    """A reader who never reads: the run goes on at its own pace, the file gets everything,
    and once the run stops the pipe holds only whole lines; the rest is counted."""
    read_end, pipe = _stalled_pipe()
    unblock_after.append(read_end)
    path = tmp_path / "kept.jsonl"
    count = 30_000  # some 8 MB: far more than any pipe holds
    with path.open("wb") as file:
        writer = EventWriter([pipe, file], names=["stdout", "kept.jsonl"], warn=lambda m: None)
        log = EventLog(writer, run_id="r", scenario="s")
        started = time.monotonic()
        for index in range(count):
            log.emit("client.waiting", client=index, message="x" * 200)
        writer.flush()
        assert time.monotonic() - started < 10, "the run waited for the reader"
        deadline = time.monotonic() + 15
        while path.read_text().count("\n") < count and time.monotonic() < deadline:
            time.sleep(0.05)
            writer.flush()  # as the run does every 0.25 s: what the pipe did not take yet
        assert path.read_text().count("\n") == count  # before the run stops
        started = time.monotonic()
        writer.close(patience=0)
        assert time.monotonic() - started < STOP_BOUND_S
    pipe.close()
    got = whole_lines(_read_all(read_end))
    assert [json.loads(line)["client"] for line in got] == list(range(len(got)))
    assert len(got) + writer.lost[pipe] == count  # type: ignore[index]
    assert writer.failed == []


def test_lines_longer_than_an_atomic_write_are_never_split(
    tmp_path: Path, unblock_after: list[int]
) -> None:
    """Lines of 2 KB to 40 KB (beyond PIPE_BUF, within a pipe) into a pipe nobody reads:
    whenever the writer stops, the pipe holds whole lines only."""
    read_end, pipe = _stalled_pipe()
    unblock_after.append(read_end)
    writer = EventWriter([pipe], warn=lambda m: None)
    log = EventLog(writer, run_id="r", scenario="s")
    for index in range(40):
        log.emit("client.error", client=index, message="y" * (2_000 + 1_000 * index))
    writer.close(patience=0.5)
    pipe.close()
    got = whole_lines(_read_all(read_end))
    assert [json.loads(line)["client"] for line in got] == list(range(len(got)))
    assert 0 < len(got) < 40
    assert len(got) + writer.lost[pipe] == 40  # type: ignore[index]


# --------------------------------------------------------------------- a full disk


def test_a_file_that_cannot_grow_ends_with_its_last_whole_line(tmp_path: Path) -> None:
    """The writer's writes fail part way (a file size limit: EFBIG, as ENOSPC would): the
    file is cut back to its last whole line and the failure is the file's own."""
    path = tmp_path / "limited.jsonl"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    with path.open("wb") as file:
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_001, hard))  # the writer inherits it
        try:
            writer = EventWriter([file], warn=lambda m: None)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        log = EventLog(writer, run_id="r", scenario="s")
        for index in range(2_000):
            log.emit("client.waiting", client=index)
        writer.close()
    assert writer.write_error is not None
    assert writer.write_error[1].errno == 27  # EFBIG
    lines = whole_lines(path.read_bytes())
    assert len(lines) > 0 and path.stat().st_size <= 50_001
    assert [json.loads(line)["client"] for line in lines] == list(range(len(lines)))


def test_output_on_a_full_device_is_an_error(loadsim: RunLoadsim, database_url: str) -> None:
    result = loadsim(
        "run",
        "normal",
        "--duration",
        "30s",
        "--database-url",
        database_url,
        "--output",
        "/dev/full",
        "--force",
        "-q",
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("loadsim: error:") and "/dev/full" in line and "ENOSPC" in line
    events = parse_events(result.stdout)
    assert events[-1]["summary"]["stop_reason"] == "output failed"  # at once, not in 30 s
    assert events[-1]["summary"]["elapsed_s"] < 10


def test_stdout_on_a_full_device_is_an_error_not_a_reader_gone(
    database_url: str, tmp_path: Path
) -> None:
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            loadsim_command("run", "normal", "--duration", "30s", "--database-url", database_url),
            stdout=full,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=clean_environment(),
            cwd=tmp_path,
            timeout=60,
            text=True,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("loadsim: error:")]
    assert len(errors) == 1 and "stdout" in errors[0] and "ENOSPC" in errors[0], result.stderr


def test_a_file_too_large_stops_the_run_and_keeps_whole_lines(
    database_url: str, tmp_path: Path
) -> None:
    """`--output` on a disk that fills (here a file size limit on the run, EFBIG): exit 2,
    one line naming the file and the errno, and the file ends with its last whole line."""
    output = tmp_path / "run.jsonl"
    limit = 30_001  # not a line boundary

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    process = subprocess.run(
        loadsim_command(
            "run",
            "normal",
            "--duration",
            "30s",
            "--database-url",
            database_url,
            "--output",
            str(output),
            "-q",
        ),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=clean_environment(),
        cwd=tmp_path,
        timeout=60,
        preexec_fn=limited,
    )
    stderr = process.stderr.decode()
    assert process.returncode == 2, stderr
    (line,) = stderr.splitlines()
    assert str(output) in line and "EFBIG" in line, line
    kept = parse_events("\n".join(whole_lines(output.read_bytes())) + "\n")
    assert kept and output.stat().st_size <= limit
    streamed = parse_events(process.stdout.decode())  # stdout is fine: it goes on to run.end
    assert streamed[-1]["summary"]["stop_reason"] == "output failed"
    assert streamed[: len(kept)] == kept


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (as root only)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_filesystem_is_an_error(
    loadsim: RunLoadsim, database_url: str, small_filesystem: Path
) -> None:
    output = small_filesystem / "run.jsonl"
    result = loadsim(
        "run",
        "normal",
        "--clients",
        "20",
        "--duration",
        "30s",
        "--database-url",
        database_url,
        "--output",
        str(output),
        "-q",
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert str(output) in line and "ENOSPC" in line, line
    kept = parse_events("\n".join(whole_lines(output.read_bytes())) + "\n")
    assert kept[0]["event"] == "run.start"


# ------------------------------------------------------- a run that fails at once


def test_a_failed_run_leaves_no_output_file(loadsim: RunLoadsim, tmp_path: Path) -> None:
    output = tmp_path / "run.jsonl"
    for _ in range(2):  # the retry needs no --force
        result = loadsim("run", "--database-url", UNREACHABLE_URL, "--output", str(output))
        assert result.returncode == 3, result.stderr
        assert "exists" not in result.stderr
        assert not output.exists()


def test_a_failed_run_leaves_a_forced_file_as_it_was(loadsim: RunLoadsim, tmp_path: Path) -> None:
    output = tmp_path / "run.jsonl"
    output.write_text("precious\n")
    result = loadsim("run", "--database-url", UNREACHABLE_URL, "--output", str(output), "--force")
    assert result.returncode == 3, result.stderr
    assert output.read_text() == "precious\n"


def test_a_forced_file_is_replaced_once_the_run_writes(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    output = tmp_path / "run.jsonl"
    output.write_text("old\n" * 1_000_000)  # longer than what the run writes
    result = loadsim(
        "run",
        "normal",
        "--iterations",
        "2",
        "--database-url",
        database_url,
        "--output",
        str(output),
        "--force",
        "-q",
    )
    assert result.returncode == 0, result.stderr
    assert parse_events(output.read_text()) == parse_events(result.stdout)


# ------------------------------------------------ closed streams, narrow encodings


def _run_in_shell(
    redirection: str, *arguments: str, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """`loadsim ARGS REDIRECTION` through sh (`>&-` closes stdout for it)."""
    return subprocess.run(
        ["sh", "-c", f'exec "$@" {redirection}', "sh", *loadsim_command(*arguments)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=clean_environment(**env),
        cwd=cwd,
        timeout=120,
        text=True,
    )


def test_a_closed_stdout_is_refused_in_one_line(tmp_path: Path) -> None:
    result = _run_in_shell(">&-", "run", "--database-url", UNREACHABLE_URL, cwd=tmp_path)
    assert result.returncode == 2, result.stderr  # before anything connects (that is 3)
    (line,) = result.stderr.splitlines()
    assert line.startswith("loadsim: error:") and "stdout is closed" in line and "--output" in line


def test_a_closed_stdout_with_output_writes_the_file(database_url: str, tmp_path: Path) -> None:
    output = tmp_path / "run.jsonl"
    result = _run_in_shell(
        ">&-",
        "run",
        "normal",
        "--iterations",
        "2",
        "--database-url",
        database_url,
        "--output",
        str(output),
        "-q",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    events = parse_events(output.read_text())
    assert events[-1]["event"] == "run.end"


def test_a_closed_stderr_runs_as_usual(database_url: str, tmp_path: Path) -> None:
    result = _run_in_shell(
        "2>&-",
        "run",
        "normal",
        "--iterations",
        "2",
        "--database-url",
        database_url,
        cwd=tmp_path,
    )
    assert result.returncode == 0
    events = parse_events(result.stdout)
    assert by_name(events, "run.end")


def test_names_an_ascii_terminal_cannot_show_are_escaped(tmp_path: Path) -> None:
    write_scenarios(
        tmp_path,
        """
        [scenarios."café"]
        description = "Un café ☕"
        clients = 1
        duration = "1s"
        """,
    )
    for arguments in (("list",), ("show", "café"), ("show", "thé")):
        result = subprocess.run(
            loadsim_command(*arguments),
            capture_output=True,
            env=clean_environment(PYTHONIOENCODING="ascii"),
            cwd=tmp_path,
            timeout=60,
        )
        stdout, stderr = result.stdout.decode("ascii"), result.stderr.decode("ascii")
        assert "Traceback" not in stderr
        if arguments[-1] == "thé":  # not a scenario: one error line, the names escaped
            assert result.returncode == 2
            (line,) = stderr.splitlines()
            assert "th\\xe9" in line and "caf\\xe9" in line, line
        else:
            assert result.returncode == 0, stderr
            assert "caf\\xe9" in stdout
