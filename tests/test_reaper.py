"""The reaper of abandoned embedded servers stops only what loadsim itself started.

A run killed outright leaves its server and directory behind, and the next run stops and
deletes them. Anyone may plant a `loadsim-pg-*` directory in the temporary directory: one whose
data directory is a symbolic link to another cluster, one owned by another account, one whose
postmaster.pid names a process that is not its server (and ignores SIGQUIT). Such directories
are left alone, with a warning, and their processes keep running; none of them may hang the
start. Each test plants in a temporary directory of its own, which no other run looks at.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadsim.run.database import EMBEDDED_SYSTEM_USER, EmbeddedPostgres
from tests.helpers import run_loadsim

NOBODY = 65534
ROOT = os.geteuid() == 0
as_root = pytest.mark.skipif(not ROOT, reason="the planted directories need root to make")


@pytest.fixture
def temporary(tmp_path: Path) -> Iterator[Path]:
    """A temporary directory for loadsim's server directories, seen by no other test or run
    (mkdtemp's, made traversable for the server account: the servers' own are 0700). Set
    as tempfile's after pytest has made its own temporary directories (`tmp_path`)."""
    directory = Path(tempfile.mkdtemp(prefix="loadsim-reaper-test-"))
    directory.chmod(0o711)
    saved, tempfile.tempdir = tempfile.tempdir, str(directory)
    try:
        yield directory
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, killed at its end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def finished_pid() -> int:
    """The number of a process that has just ended."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def running(pid: int) -> bool:
    """The process exists and has not ended (a zombie nobody has reaped yet has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def snapshot(directory: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry under `directory` (not following links): mode, owner, size, link target."""
    entries = {}
    for path in [directory, *directory.rglob("*")]:
        info = path.lstat()
        target = os.readlink(path) if path.is_symlink() else ""
        entries[str(path)] = (info.st_mode, info.st_uid, info.st_size, target)
    return entries


def plant(
    temporary: Path, name: str, postmaster_pid: int | None = None, owner: int | None = None
) -> Path:
    """A directory shaped like a dead run's: owner.pid names a process that has ended, and
    data/postmaster.pid (when given) names `postmaster_pid`; all of it belonging to `owner`."""
    directory = temporary / f"loadsim-pg-{name}"
    (directory / "data").mkdir(parents=True)
    (directory / "owner.pid").write_text(str(finished_pid()))
    (directory / "data" / "PG_VERSION").write_text("18\n")  # what pg_ctl takes for a cluster
    if postmaster_pid is not None:
        pid_file = directory / "data" / "postmaster.pid"
        pid_file.write_text(f"{postmaster_pid}\n{directory / 'data'}\n1700000000\n5432\n")
    if owner is not None:
        for path in [directory, *directory.rglob("*")]:
            os.lchown(path, owner, owner)
    return directory


def reap(within: float = 15) -> EmbeddedPostgres:
    """An EmbeddedPostgres's reaper, run as start() runs it; it must finish within `within`."""
    server = EmbeddedPostgres()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            server.reaped = server.reap_abandoned()
        except BaseException as error:  # the test says which
            errors.append(error)

    worker = threading.Thread(target=work, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(within)
    assert not worker.is_alive(), f"the reaper still runs after {within} s"
    assert not errors, f"the reaper raised {errors[0]!r}"
    assert time.monotonic() - started < within
    return server


def assert_left_alone(server: EmbeddedPostgres, directory: Path, *words: str) -> None:
    assert directory not in server.reaped
    (warning,) = [message for message in server.reaper_warnings if str(directory) in message]
    assert warning.startswith(f"left {directory} alone"), warning
    for word in words:
        assert word in warning, warning


# ------------------------------------------------------------------ left alone


@as_root
def test_a_data_directory_linked_to_another_cluster_is_left_alone(temporary: Path) -> None:
    with EmbeddedPostgres() as other:  # another cluster, running (its owner, us, is alive)
        postmaster = int((other.data_directory / "postmaster.pid").read_text().split()[0])
        planted = plant(temporary, "linked")
        shutil.rmtree(planted / "data")
        (planted / "data").symlink_to(other.data_directory)
        before = snapshot(planted)
        server = reap()
        assert_left_alone(server, planted, "symbolic link")
        assert running(postmaster), "the other cluster's server was stopped"
        assert snapshot(planted) == before
        other.restart()  # still a working server: pg_ctl finds it


@as_root
def test_a_directory_of_another_account_is_left_alone(
    temporary: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    # The other account's process, which a pg_ctl run as that account could signal.
    sleeper = subprocess.Popen(["sleep", "60"], user=NOBODY, group=NOBODY, extra_groups=[])
    processes.append(sleeper)
    planted = plant(temporary, "stranger", postmaster_pid=sleeper.pid, owner=NOBODY)
    before = snapshot(planted)
    server = reap()
    assert_left_alone(server, planted, f"uid {NOBODY}")
    assert running(sleeper.pid)
    assert snapshot(planted) == before


def test_a_process_that_is_not_its_server_is_left_alone(
    temporary: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """postmaster.pid names a live process of the server's own account that ignores SIGQUIT
    (as root, the embedded_postgres account; else ours): not signalled, and no wait for it."""
    account: dict[str, Any] = {}
    owner = None
    if ROOT:
        try:
            entry = pwd.getpwnam(EMBEDDED_SYSTEM_USER)
        except KeyError:
            pytest.skip(f"no {EMBEDDED_SYSTEM_USER} account")
        owner = entry.pw_uid
        account = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    # A sleep that ignores SIGQUIT, as an ignored signal stays ignored across exec.
    stubborn = subprocess.Popen(
        ["sh", "-c", "trap '' QUIT; exec sleep 60"],
        **account,
    )
    processes.append(stubborn)
    planted = plant(temporary, "impostor", postmaster_pid=stubborn.pid, owner=owner)
    before = snapshot(planted)
    server = reap(within=10)
    assert_left_alone(server, planted, f"process {stubborn.pid}", "not its server")
    assert running(stubborn.pid)
    assert snapshot(planted) == before


@as_root
def test_a_symbolic_link_as_the_directory_is_left_alone(temporary: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    (elsewhere / "owner.pid").write_text(str(finished_pid()))
    (temporary / "loadsim-pg-link").symlink_to(elsewhere)
    before = snapshot(elsewhere)
    server = reap()
    assert_left_alone(server, temporary / "loadsim-pg-link", "symbolic link")
    assert snapshot(elsewhere) == before


def test_a_fifo_for_a_file_does_not_block_the_start(temporary: Path) -> None:
    planted = plant(temporary, "fifo")
    (planted / "owner.pid").unlink()
    os.mkfifo(planted / "owner.pid")
    old = time.time() - 3600  # not a directory still being set up
    os.utime(planted, (old, old))
    server = reap(within=10)
    assert_left_alone(server, planted, "owner.pid", "not a regular file")
    assert (planted / "owner.pid").exists()


# ------------------------------------------------------------------ reaped


def test_an_abandoned_loadsim_server_is_still_stopped_and_deleted(temporary: Path) -> None:
    abandoned = EmbeddedPostgres()
    abandoned.start()
    try:
        assert abandoned.directory is not None
        directory = abandoned.directory
        postmaster = int((abandoned.data_directory / "postmaster.pid").read_text().split()[0])
        (directory / "owner.pid").write_text(str(finished_pid()))  # its run has died
        server = reap()
        assert server.reaped == [directory]
        assert server.reaper_warnings == [
            f"stopped an embedded PostgreSQL abandoned by an earlier run ({directory})"
        ]
        assert not directory.exists()
        deadline = time.monotonic() + 5
        while running(postmaster) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(postmaster)
    finally:
        abandoned.stop()


def test_a_run_in_progress_and_a_directory_being_set_up_are_not_touched(
    temporary: Path,
) -> None:
    with EmbeddedPostgres() as live:
        assert live.directory is not None
        young = temporary / "loadsim-pg-young"
        young.mkdir()  # no owner.pid yet: its owner is still setting it up
        server = reap()
        assert server.reaped == [] and server.reaper_warnings == []
        assert live.directory.exists() and young.exists()
        os.kill(int((live.data_directory / "postmaster.pid").read_text().split()[0]), 0)


def test_the_start_reports_what_it_left_alone(
    temporary: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """What start() did is on the server object for the run to print (`reaper_warnings`)."""
    sleeper = subprocess.Popen(["sleep", "60"])
    processes.append(sleeper)
    planted = plant(temporary, "sleeper", postmaster_pid=sleeper.pid)
    with EmbeddedPostgres() as server:
        assert_left_alone(server, planted, f"process {sleeper.pid}")
    assert running(sleeper.pid)
    assert planted.exists()
    sleeper.send_signal(signal.SIGTERM)


def test_a_run_warns_about_what_it_left_alone_and_runs(
    temporary: Path, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """The real command, with the planted directory in its TMPDIR: one warning line on
    stderr, the run itself as usual, the planted process and files untouched."""
    sleeper = subprocess.Popen(["sleep", "60"])
    processes.append(sleeper)
    planted = plant(temporary, "sleeper", postmaster_pid=sleeper.pid)
    before = snapshot(planted)
    started = time.monotonic()
    result = run_loadsim(
        "run", "normal", "--iterations", "1", cwd=tmp_path, env={"TMPDIR": str(temporary)}
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if str(planted) in line]
    assert f"left {planted} alone" in warning and f"process {sleeper.pid}" in warning
    assert time.monotonic() - started < 30
    assert running(sleeper.pid)
    assert snapshot(planted) == before
