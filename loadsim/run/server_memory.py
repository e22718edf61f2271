"""Memory: what our sessions cost the server, and what loadsim itself takes.

Each connection of the pool is a server backend, a process with memory of its own. The figure
is its proportional set size (Pss, from `/proc/<pid>/smaps_rollup`): every page it maps,
a shared page divided by the number of processes that map it. Plain RSS would count in full
each page of shared buffers a backend has touched, so forty backends' RSS add up to far more
than the server uses; their Pss add up to what they cost.

Only a server on this host can be read that way. Whether it is, is decided once per scenario
by identity, never by host name (`locate_server`): the control connection's own backend pid
must be, here, a PostgreSQL process whose postmaster (its parent) started when the server
says it did (`pg_postmaster_start_time()`), and its smaps_rollup must be readable. Otherwise
the server figures are null and the reason is said once (`run.start`'s `server_memory`).

Reading smaps_rollup walks a process's page tables in the kernel, shared buffers' mapping
included: about 0.45 ms a backend here (18 ms for 40; loadsim's own, 0.7 ms), nearly all of
it in the system call, with the GIL released. `MemorySampler.sample` reads in a thread
(`asyncio.to_thread`), at the monitor's snapshot cadence, off the event loop. The backends
read are the pool's own (`backend_pid` of every open connection): no query is needed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where processes are described.
PROC = Path("/proc")
#: How our backends' memory is measured, when it is.
METHOD = "Pss from /proc/<backend pid>/smaps_rollup"
#: How far apart the postmaster's process start and pg_postmaster_start_time() may be (the
#: kernel's boot time is in whole seconds; the server takes its time a moment after exec).
START_TOLERANCE_S = 5.0
_KIB_PER_MIB = 1024


# ------------------------------------------------------------------------ /proc readers


def pss_kib(pid: int | str, proc: Path = PROC) -> int:
    """The proportional set size of a process (`self` for this one), in KiB. OSError when it
    cannot be read (no such process, no permission); ValueError without a Pss line."""
    with open(proc / str(pid) / "smaps_rollup", "rb") as rollup:
        for line in rollup:
            if line.startswith(b"Pss:"):
                return int(line.split()[1])
    raise ValueError(f"{proc / str(pid) / 'smaps_rollup'} has no Pss line")


def _mib(kib: float) -> float:
    return round(kib / _KIB_PER_MIB, 3)


def _unreadable(pid: int | str, error: Exception) -> str:
    """Why a process's memory could not be read, in words."""
    if isinstance(error, FileNotFoundError | ProcessLookupError):
        return f"no process {pid} on this host"
    if isinstance(error, PermissionError):
        return (
            f"no permission to read /proc/{pid}/smaps_rollup (run loadsim as the server's "
            "user, or as root)"
        )
    if isinstance(error, OSError):
        return f"cannot read /proc/{pid}/smaps_rollup: {error.strerror or error}"
    return str(error)


def client_memory_mb(proc: Path = PROC) -> float | None:
    """This process's Pss in MiB (None where /proc cannot tell)."""
    try:
        return _mib(pss_kib("self", proc))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ServerMemory:
    """Our backends' memory at one moment: in total, per backend measured, and how many
    were. `total_mb` is None, with a `reason`, when none could be read; `ended` counts the
    backends that no longer existed when they were read."""

    total_mb: float | None
    per_connection_mb: float | None
    backends: int
    reason: str | None = None
    ended: int = 0


def measure_backends(pids: Collection[int], proc: Path = PROC) -> ServerMemory:
    """The Pss of these backends, added up. A backend that ended between being listed and
    being read is left out; when none of them can be read, the figures are None and
    `reason` says why (never 0). No backend at all is 0 MiB, with no figure per connection."""
    return added_up(read_backends(pids, proc))


def read_backends(pids: Collection[int], proc: Path = PROC) -> dict[int, int | Exception]:
    """Each backend's Pss in KiB, or why it could not be read."""
    readings: dict[int, int | Exception] = {}
    for pid in pids:
        try:
            readings[pid] = pss_kib(pid, proc)
        except (OSError, ValueError) as error:
            readings[pid] = error
    return readings


def added_up(readings: Mapping[int, int | Exception]) -> ServerMemory:
    """`read_backends`' readings as one figure (see `measure_backends`)."""
    total, measured, ended, reason = 0, 0, 0, None
    for pid, reading in readings.items():
        if isinstance(reading, int):
            total += reading
            measured += 1
        else:
            ended += isinstance(reading, FileNotFoundError | ProcessLookupError)
            reason = reason or _unreadable(pid, reading)
    if not measured:
        if not readings:
            return ServerMemory(0.0, None, 0)
        return ServerMemory(None, None, 0, reason, ended)
    return ServerMemory(_mib(total), _mib(total / measured), measured, ended=ended)


# ---------------------------------------------------------------- is the server here?


def _start_time_s(pid: int, proc: Path) -> float:
    """When a process started, in seconds since the epoch (from /proc/<pid>/stat)."""
    stat = (proc / str(pid) / "stat").read_text()
    # the fields after the command name (which may hold spaces), from field 3 (state) on
    after_name = stat.rsplit(")", 1)[1].split()
    ticks_since_boot = int(after_name[19])  # field 22, starttime
    boot = next(
        int(line.split()[1])
        for line in (proc / "stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot + ticks_since_boot / os.sysconf("SC_CLK_TCK")


def _parent(pid: int, proc: Path) -> int:
    return int((proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])


def backend_on_this_host(pid: int, postmaster_started: float, proc: Path = PROC) -> str | None:
    """None when `pid` is, on this host, a readable backend of the server whose postmaster
    started at `postmaster_started` (seconds since the epoch); otherwise why not."""
    elsewhere = "the server is not on this host (or not in this host's process namespace)"
    try:
        command = (proc / str(pid) / "cmdline").read_bytes()
    except OSError as error:
        return f"{elsewhere}: {_unreadable(pid, error)}, its backend's pid"
    if b"postgres" not in command and b"postmaster" not in command:
        return f"{elsewhere}: process {pid} here is not a PostgreSQL backend"
    try:
        parent = _parent(pid, proc)
        started = _start_time_s(parent, proc)
    except (OSError, ValueError, IndexError, StopIteration) as error:
        return f"cannot tell whether process {pid} here is the server's backend: {error}"
    if abs(started - postmaster_started) > START_TOLERANCE_S:
        return (
            f"{elsewhere}: process {pid} here is a backend of another PostgreSQL (its "
            f"postmaster started {started - postmaster_started:+.0f} s from the server's)"
        )
    try:
        pss_kib(pid, proc)
    except (OSError, ValueError) as error:
        return f"the server is on this host, but {_unreadable(pid, error)}"
    return None


async def locate_server(connection: Any) -> str | None:
    """None when our backends' memory can be read here (the server is on this host and its
    processes are readable); otherwise why not. `connection`: an asyncpg connection to it."""
    row = await connection.fetchrow(
        "SELECT pg_backend_pid() AS pid,"
        " extract(epoch FROM pg_postmaster_start_time())::float8 AS started"
    )
    return await asyncio.to_thread(backend_on_this_host, row["pid"], row["started"])


# ------------------------------------------------------------------------- the sampler


class MemorySampler:
    """Memory at each `monitor.stats` snapshot, and its peaks for the summary.

    `reason` (from `locate_server`) None: our backends are measured; otherwise it says why
    they are not, and their figures are null throughout. loadsim's own memory is measured
    either way.
    """

    def __init__(self, reason: str | None) -> None:
        self.reason = reason
        self._peak_mb: float | None = None
        self._client_peak_mb: float | None = None
        self._sum_mb = 0.0  # over every snapshot: our backends' memory ...
        self._sum_backends = 0  # ... and how many backends it was of
        #: The first reason a snapshot could not read our backends, after `locate_server`
        #: found that it could (None: every snapshot could).
        self.failure: str | None = None

    @classmethod
    async def for_server(cls, connection: Any) -> MemorySampler:
        return cls(await locate_server(connection))

    def described(self) -> dict[str, Any]:
        """`run.start`'s `server_memory`: whether and how our backends are measured."""
        measured = self.reason is None
        return {"measured": measured, "method": METHOD if measured else None, "reason": self.reason}

    async def sample(
        self, pids: Collection[int], still_open: Callable[[], Collection[int]] | None = None
    ) -> dict[str, Any]:
        """A snapshot's memory fields, read in a thread; of the backends `pids`, only those
        `still_open()` says are open once they have been read (the snapshot's counts are
        taken then, and its backends must be among its connections)."""
        readings, client = await asyncio.to_thread(self._read, list(pids))
        if still_open is not None:
            open_now = set(still_open())
            readings = {pid: reading for pid, reading in readings.items() if pid in open_now}
        server = (
            ServerMemory(None, None, 0, self.reason)
            if self.reason is not None
            else added_up(readings)
        )
        if server.total_mb is not None:
            self._peak_mb = max(self._peak_mb or 0.0, server.total_mb)
            self._sum_mb += server.total_mb
            self._sum_backends += server.backends
        elif self.reason is None and self.failure is None and server.ended < len(pids):
            self.failure = server.reason  # (not backends that ended: a restart, a close)
        if client is not None:
            self._client_peak_mb = max(self._client_peak_mb or 0.0, client)
        return {
            "server_memory_mb": server.total_mb,
            "server_memory_per_connection_mb": server.per_connection_mb,
            "server_memory_backends": server.backends,
            "client_memory_mb": client,
        }

    def _read(self, pids: list[int]) -> tuple[dict[int, int | Exception], float | None]:
        readings = read_backends(pids) if self.reason is None else {}
        return readings, client_memory_mb()

    def summary(self) -> dict[str, Any]:
        """`run.end`'s memory figures: the peaks, and the mean per connection."""
        per_connection = round(self._sum_mb / self._sum_backends, 3) if self._sum_backends else None
        return {
            "server_memory_peak_mb": self._peak_mb,
            "server_memory_per_connection_mb": per_connection,
            "client_memory_peak_mb": self._client_peak_mb,
        }
