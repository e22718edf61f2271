"""What one loadsim process, this machine and any PostgreSQL server can do: the bounds every
number of a scenario, a flag or an environment variable is checked against before anything
starts. Each bound has its reason, which the error repeats.

Standard library only: the configuration layer stays light.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Counts that are written to the event stream (iterations, max_in_flight, ...) are 64-bit
#: integers there, as in JSON parsers; beyond that the writer cannot render them.
INT64_MAX = 2**63 - 1
#: A seed is any 64-bit unsigned integer (as in most generators' seeding).
SEED_MAX = 2**64 - 1

#: PostgreSQL's MAX_BACKENDS: no server accepts a max_connections above it.
POSTGRES_MAX_CONNECTIONS = 262_143
#: Connections kept free above the pool on the embedded server (lifecycle's headroom).
CONNECTION_HEADROOM = 20
#: PostgreSQL's integer settings in milliseconds (idle_session_timeout, ...) stop at INT_MAX.
POSTGRES_MAX_MS = 2**31 - 1

#: The longest duration anywhere in a scenario (a run, a hold, a ramp-up, a fault's start):
#: 30 days, longer than any soak; a longer one is a slip of the unit ("30d" for "30s").
MAX_DURATION_S = 30 * 86_400
#: Waits and holds are measured up to an hour (the histograms' range, run/histogram.py): a
#: pool_timeout beyond it would be a wait that no figure could report.
MAX_LATENCY_S = 3_600
#: monitor.interval at least 10 ms: each snapshot asks the server for its sessions; more often
#: the monitor measures itself and its queries load the server it watches.
MIN_MONITOR_INTERVAL_S = 0.01

#: Memory one waiting client costs (bench/scale.py: 16 KB at 1,000 to 50,000 clients).
BYTES_PER_CLIENT = 16 * 1024
#: Clients (the main workload's and its groups') one instance process drives. bench/scale.py
#: measured 50,000 all asking within seconds with a loop lag p99 of 1-2 ms; at 200,000 the
#: process spent half a minute starting them, 20 ms holds took 1.7 s, and a stop took 6-14 s
#: (each waiting client costs some 0.1 ms to wind down): the figures measured loadsim, not the
#: pool. More clients than this are for --instances, each its own process.
MAX_CLIENTS_PER_INSTANCE = 50_000
#: Memory one instance process costs before its clients (Python, SQLAlchemy, asyncpg: ~60 MB).
BYTES_PER_INSTANCE = 80 * 1024 * 1024

#: Requests an open workload may ask for per second, per instance. One process starts about
#: 20,000 a second (each a task asking the pool for a connection; measured on this project's
#: 2-core machine) and a pool serves a few thousand: beyond this, a rate measures only how
#: fast loadsim counts drops. At this rate the arrivals driver keeps to its schedule (loop
#: lag p99 of a few ms) and a run stops at once on Ctrl-C.
MAX_ARRIVAL_RATE = 100_000.0

#: Application instances per CPU: each is a Python process with its own event loop; beyond a
#: few per CPU they measure the operating system's scheduler, not the pool.
INSTANCES_PER_CPU = 16


def max_instances() -> int:
    """16 per CPU this process may run on (its affinity, else the machine's count)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return INSTANCES_PER_CPU * max(cpus, 1)


@dataclass(frozen=True)
class Memory:
    """Memory this process may take without the machine swapping or killing it."""

    available: int
    #: Where the figure comes from, for the error.
    source: str


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> Memory:
    """MemAvailable from /proc/meminfo (memory the kernel can give without swapping), else
    the physical memory (sysconf)."""
    try:
        for line in meminfo.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(":")
            if name == "MemAvailable":
                kilobytes = value.split()[0]
                return Memory(int(kilobytes) * 1024, f"MemAvailable in {meminfo}")
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return Memory(INT64_MAX, "unknown")
    return Memory(pages * page_size, "physical memory")


def format_bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"
