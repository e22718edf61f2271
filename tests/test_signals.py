"""Signals at the awkward moments: while the embedded server is being made or started, twice
in a row, while loadsim is still importing, while a fleet's instances start, while the server
stops after the last scenario, and SIGHUP (a closed terminal). Whenever one comes, loadsim
exits 128 + the signal without a traceback and leaves no server, process or directory behind.

Each test waits for the moment it means (a program of the server's running, an import done, an
instance started, the server told to stop) and signals then, as a terminal's Ctrl-C does: the
whole process group. Through the real command, against a real server.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.helpers import (
    assert_server_gone,
    by_name,
    clean_environment,
    embedded_server_processes,
    first_line,
    loadsim_command,
    parse_events,
    server_directories_of,
    sessions_left,
    start_loadsim,
    wait_for_start,
)

T = TypeVar("T")

#: What ends a traceback, or Python's own complaint about an interrupted start-up.
NOISE = ("Traceback", "KeyboardInterrupt", "Fatal Python error", "Exception ignored")


def wait_for(what: str, found: Callable[[], T], timeout: float = 60) -> T:
    """Polls `found` (every 2 ms) until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout
    while True:
        value = found()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.002)


def start_in_its_own_group(*arguments: str, cwd: Path, **options: Any) -> subprocess.Popen[str]:
    """`loadsim ARGS`, leading a process group of its own: `interrupt` signals the group."""
    return start_loadsim(*arguments, cwd=cwd, start_new_session=True, **options)


def interrupt(process: subprocess.Popen[Any], signum: int = signal.SIGINT) -> None:
    """The signal to the process's whole group, as a terminal sends Ctrl-C."""
    os.killpg(process.pid, signum)


def directory_of(process: subprocess.Popen[Any]) -> Path:
    """The embedded server's directory of the loadsim process, once it has made it."""
    (directory,) = wait_for("server directory", lambda: server_directories_of(process.pid))
    return directory


def running(directory: Path, program: str) -> list[str]:
    """Command lines of the server's programs of `directory` that contain `program`."""
    return [
        line for line in embedded_server_processes() if str(directory) in line and program in line
    ]


#: The moments of the server's start a test signals at: initdb running, or the postmaster
#: starting (its postmaster.pid is there, written first thing, long before it is ready).
MOMENTS: dict[str, Callable[[Path], object]] = {
    "initdb": lambda directory: running(directory, "bin/initdb"),
    "the postmaster's start": lambda directory: (directory / "data/postmaster.pid").exists(),
}


def assert_nothing_left(directory: Path) -> None:
    """No process of that server's is left (one being killed gets a moment to go), and its
    directory is gone."""
    deadline = time.monotonic() + 10
    while running(directory, "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_server_gone(directory)


def stopped_by(signum: int) -> set[int]:
    """The exit statuses of a loadsim stopped by `signum`: 128 + its number, or, when the
    signal came in the interpreter's very last moments (its own clean-up, after loadsim's
    code has finished and stopped everything), killed by it, which a shell reports as the
    same 128 + n."""
    return {128 + signum, -signum}


# ------------------------------------------------------------ during the server's start


@pytest.mark.parametrize(
    ("moment", "signum"),
    [
        ("initdb", signal.SIGINT),
        ("initdb", signal.SIGTERM),
        ("the postmaster's start", signal.SIGINT),
    ],
)
def test_a_signal_while_the_server_is_made_or_started_exits_128_plus_n(
    tmp_path: Path, moment: str, signum: int
) -> None:
    """The issue: Ctrl-C during initdb or the server's start exited 3 ("the embedded
    PostgreSQL failed"): the server's programs got the signal too, and failed."""
    process = start_in_its_own_group("run", "normal", "--iterations", "3", "-q", cwd=tmp_path)
    directory = directory_of(process)
    wait_for(moment, lambda: MOMENTS[moment](directory), timeout=120)
    interrupt(process, signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert not any(noise in stderr for noise in NOISE), stderr
    assert "error" not in stderr
    events = parse_events(stdout)
    if events:  # (the postmaster was quicker than the signal: the run had begun)
        assert events[-1]["event"] == "run.end"
        assert events[-1]["summary"]["interrupted"] is True
    assert_nothing_left(directory)


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_two_ctrl_cs_during_the_start_leave_nothing(tmp_path: Path, moment: str) -> None:
    """The issue: two SIGINTs 50 ms apart during start-up left a postmaster running or a
    39 MB data directory behind (the second exited before the first had cleaned up)."""
    process = start_in_its_own_group("run", "normal", "--iterations", "3", "-q", cwd=tmp_path)
    directory = directory_of(process)
    wait_for(moment, lambda: MOMENTS[moment](directory), timeout=120)
    interrupt(process)
    time.sleep(0.05)
    interrupt(process)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in stopped_by(signal.SIGINT), stderr
    assert not any(noise in stderr for noise in NOISE), stderr
    assert_nothing_left(directory)


# ------------------------------------------------------------------- while importing


def imports_done(stream: Any, module: str) -> None:
    """Reads `-X importtime`'s report on stderr ("import time: 279 | 45591 |   typer") until
    `module` has been imported."""
    for line in stream:
        if line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == module:
            return
    pytest.fail(f"it ended before importing {module}")


@pytest.mark.parametrize("how", ["python -m loadsim", "the console script"])
def test_ctrl_c_while_importing_exits_130_quietly(tmp_path: Path, how: str) -> None:
    """The issue: Ctrl-C in the first half second printed a KeyboardInterrupt traceback from
    the imports. The signal comes once typer is imported, with loadsim's own modules and the
    run's libraries still to come."""
    command = loadsim_command("run", "normal", "--iterations", "1")
    if how == "the console script":
        script = Path(sys.executable).with_name("loadsim")
        if not script.exists():
            pytest.skip("loadsim is not installed as a console script here")
        command = [str(script), *command[3:]]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(PYTHONPROFILEIMPORTTIME="1"),  # says what it has imported
        cwd=tmp_path,
        start_new_session=True,
    )
    assert process.stderr is not None
    imports_done(process.stderr, "typer")
    interrupt(process)
    stdout, stderr = process.communicate(timeout=60)
    said = [line for line in stderr.splitlines() if not line.startswith("import time:")]
    assert process.returncode == 130, said
    assert said == []  # not a traceback, not even "aborted"
    assert stdout == ""
    assert not server_directories_of(process.pid)


# ------------------------------------------------------------------ a fleet starting


def instances_of(parent: int) -> list[int]:
    """The fleet instances the loadsim process `parent` has started (exec'd: not yet
    Python's own copy of the parent)."""
    listing = subprocess.run(
        ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(parent)], capture_output=True, text=True
    ).stdout
    return [int(line.split()[0]) for line in listing.splitlines() if "loadsim _instance" in line]


def test_ctrl_c_while_eight_instances_start(database_url: str, tmp_path: Path) -> None:
    """The issue: SIGINT while 8 instances started printed some 80 lines of tracebacks (the
    instances' own, passed on) and exited 1 (instances that died of it had "failed").
    The signal comes as soon as the first instance exists: it and the seven still to come
    are interrupted in their start-up."""
    process = start_in_its_own_group(
        "run",
        "normal",
        "--instances",
        "8",
        "--duration",
        "30s",
        "--database-url",
        database_url,
        cwd=tmp_path,  # not -q: what the instances say on stderr is passed on
    )
    wait_for("an instance", lambda: instances_of(process.pid))
    interrupt(process)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert not any(noise in stderr for noise in NOISE), stderr
    assert "error" not in stderr, stderr
    events = parse_events(stdout)
    if events:  # some instance got as far as its run.start: it ended cleanly
        assert sessions_left(database_url, events[0]["run_id"]) == 0
    assert not instances_of(process.pid)


def test_sighup_stops_a_fleet_like_sigterm(database_url: str, tmp_path: Path) -> None:
    process = start_in_its_own_group(
        "run",
        "saturation",
        "--instances",
        "2",
        "--duration",
        "60s",
        "--database-url",
        database_url,
        "-q",
        cwd=tmp_path,
    )
    # both instances under way (a signal before an instance's run.start stops it before its
    # run, with no run.end: "While loadsim starts", README)
    first = wait_for_start(process)
    while first.count('"run.start"') < 2:
        line = first_line(process)
        assert line, first
        first += line
    interrupt(process, signal.SIGHUP)
    rest, stderr = process.communicate(timeout=60)
    assert process.returncode == 129, stderr
    events = parse_events(first + rest)
    ends = by_name(events, "run.end")
    assert len(ends) == 2
    assert all(end["summary"]["signal"] == "SIGHUP" for end in ends)
    assert events[-1]["event"] == "run.summary"
    assert events[-1]["summary"]["interrupted"] is True
    assert "failed" not in stderr
    assert sessions_left(database_url, events[0]["run_id"]) == 0


# ------------------------------------------------------ while the server stops, at the end


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_server_stops_still_stops_it(tmp_path: Path, signum: int) -> None:
    """The issue: a signal during the final server stop left the data directory behind
    (SIGTERM: the loop had closed, and its handlers with it). The signal comes once the
    server has been told to stop (its log says so); the scenario is over, so its run.end
    stays as it was written: interrupted false (README, "Stopping")."""
    process = start_in_its_own_group("run", "normal", "--iterations", "2", "-q", cwd=tmp_path)
    directory = directory_of(process)
    log = directory / "server.log"
    lines = [first_line(process)]
    while '"run.end"' not in lines[-1]:
        lines.append(first_line(process))
        assert lines[-1], "the run ended without run.end"

    def stopping() -> bool:
        try:
            return "shutdown request" in log.read_text(errors="replace")
        except OSError:
            return True  # gone already: the stop is over, and loadsim on its way out

    wait_for("the server's stop", stopping)
    interrupt(process, signum)
    rest, stderr = process.communicate(timeout=60)
    assert process.returncode in stopped_by(signum), stderr
    assert not any(noise in stderr for noise in NOISE), stderr
    events = parse_events("".join(lines) + rest)
    assert events[-1]["event"] == "run.end"
    assert events[-1]["summary"]["interrupted"] is False
    assert_nothing_left(directory)


# ------------------------------------------------------------------- a closed terminal


def test_a_closed_terminal_stops_the_run_cleanly_with_129(tmp_path: Path) -> None:
    """The issue: SIGHUP (a closed terminal, a dropped ssh session) killed the run outright,
    with no run.end and the postmaster left running. Here stderr is a terminal (so the live
    dashboard draws on it) and loadsim's controlling one; closing its other end hangs it up:
    the kernel sends SIGHUP, and every write to it fails from then on."""
    controller, terminal = os.openpty()

    def take_the_terminal() -> None:  # (in the child, after start_new_session's setsid)
        fcntl.ioctl(2, termios.TIOCSCTTY, 0)

    process = start_in_its_own_group(
        "run",
        "normal",
        "--duration",
        "60s",
        cwd=tmp_path,
        stderr=terminal,
        env={"TERM": "xterm"},
        preexec_fn=take_the_terminal,
    )
    os.close(terminal)
    try:
        first = wait_for_start(process)
        directory = directory_of(process)
        select.select([controller], [], [], 10)  # the dashboard is drawing
    finally:
        os.close(controller)  # the window closes
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 129
    events = parse_events(first + rest)
    assert events[-1]["event"] == "run.end"
    summary = events[-1]["summary"]
    assert summary["interrupted"] is True
    assert summary["signal"] == "SIGHUP"
    assert_nothing_left(directory)
    assert json.loads(first)["database"] == "embedded"
