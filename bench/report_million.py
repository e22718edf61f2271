"""Benchmark: `loadsim report` on a log of a million events, in time and memory.

Synthesises a run log in loadsim's schema, its names and version taken from loadsim/schema.py
(a discrete-event simulation of a QueuePool of
20 + 10 overflow under 60 clients, with a server restart half-way), writes it to a temporary
file, then runs the real command on it (`python -m loadsim report LOG --out DIR`) in a child
process and reports the wall time and the child's peak resident memory. The same is done for
a log a tenth the size: bounded memory means the two peaks are close, not ten times apart.

    python bench/report_million.py [--events 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

import orjson

from loadsim.run.metrics import fairness  # the summary's checkouts_per_client, as a run has it
from loadsim.schema import (
    COUNTER_FIELDS,
    ENVELOPE,
    HIGH_WATER_MARKS,
    LATENCY_NAMES,
    PERCENTILE_KEYS,
    PERCENTILES,
    POOL_COUNTS,
    SCHEMA_VERSION,
    latency_key,
)

POOL_SIZE = 20
MAX_OVERFLOW = 10
CLIENTS = 60
RUN_ID = "bench0000001"
SCENARIO = "bench"
STARTED = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
COUNTERS = tuple(field.name for field in COUNTER_FIELDS)


class Writer:
    """Writes events one a line, as loadsim does (envelope keys first)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.count = 0

    def emit(self, t: float, event: str, **fields: Any) -> None:
        ts = (STARTED + dt.timedelta(seconds=t)).isoformat(timespec="microseconds")
        line = dict(zip(ENVELOPE, (ts, round(t, 6), event, RUN_ID, SCENARIO, 0), strict=True))
        line.update(fields)
        self.stream.write(orjson.dumps(line) + b"\n")
        self.count += 1


def figures(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    result: dict[str, float] = {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 3),
    }
    for key, q in zip(PERCENTILE_KEYS, PERCENTILES, strict=True):
        result[key] = round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 3)
    result["max"] = round(ordered[-1], 3)
    return result


def no_latencies() -> dict[str, dict[str, float]]:
    """Every latency of a snapshot or a summary, with nothing measured."""
    return {latency_key(name): {"count": 0} for name in LATENCY_NAMES}


def synthesise(path: Path, target_events: int, seed: int = 1) -> int:
    """Writes a run log of about `target_events` events; returns how many it wrote."""
    rng = random.Random(seed)
    with path.open("wb", buffering=1 << 20) as stream:
        out = Writer(stream)
        out.emit(
            0.01,
            "run.start",
            schema_version=SCHEMA_VERSION,
            description="Synthetic: a saturated pool of 20 + 10 under 60 clients, a restart",
            database="synthetic",
            server_version="18.6",
            server_max_connections=100,
            application_name=f"loadsim:{RUN_ID}",
            pool={
                "pool_class": "queue",
                "pool_size": POOL_SIZE,
                "max_overflow": MAX_OVERFLOW,
                "pool_timeout": 30.0,
                "pool_recycle": -1.0,
                "pool_pre_ping": True,
                "pool_use_lifo": False,
                "pool_reset_on_return": "rollback",
                "echo_pool": False,
            },
            workload={
                "clients": CLIENTS,
                "duration_s": None,
                "iterations": None,
                "ramp_up_s": 0.0,
                "hold": "uniform(20ms, 60ms)",
                "think": "exp(40ms)",
                "query": None,
                "in_transaction": False,
            },
            groups=[],
            faults={"restart": []},
            monitor={"interval": 1.0, "leak_threshold": None, "leak_reclaim": None},
            thresholds=[],
            arrivals=None,
            instances=1,
            seed=seed,
            sources={},
            loadsim_version="bench",
            sqlalchemy_version="bench",
            python_version="bench",
        )
        idle: deque[int] = deque()
        holding: dict[int, tuple[int, float]] = {}  # client → (conn, since)
        waiting: deque[tuple[int, float]] = deque()
        open_conns = 0
        next_conn = 1
        heap: list[tuple[float, int, str, int]] = []
        sequence = 0
        stopping = False
        fault_done = False
        window_waits: list[float] = []
        window_uses: list[float] = []
        all_waits: list[float] = []
        all_uses: list[float] = []
        creates: list[float] = []
        checkouts = 0
        per_client = [0] * CLIENTS
        closes = 0
        max_open = 0
        max_pending = 0
        next_stats = 1.0
        window_checkouts = 0
        # every checkout is 6 events; leave room for the rest
        stop_after = target_events - 400

        last_totals: dict[str, int] = {}

        def counts() -> dict[str, int]:
            overflow = max(0, open_conns - POOL_SIZE)
            values = (open_conns, len(holding), len(idle), overflow, len(waiting))
            return dict(zip(POOL_COUNTS, values, strict=True))

        def totals() -> dict[str, int]:
            return {
                **dict.fromkeys(COUNTERS, 0),
                "checkouts": checkouts,
                "connects": next_conn - 1,
                "closes": closes,
                "max_open": max_open,
                "max_pending_requests": max_pending,
            }

        def schedule(t: float, kind: str, client: int) -> None:
            nonlocal sequence
            sequence += 1
            heapq.heappush(heap, (t, sequence, kind, client))

        def checkout(t: float, client: int, conn: int, asked: float) -> None:
            nonlocal checkouts, window_checkouts
            holding[client] = (conn, t)
            checkouts += 1
            per_client[client] += 1
            window_checkouts += 1
            wait = (t - asked) * 1000
            window_waits.append(wait)
            all_waits.append(wait)
            out.emit(  # the default stream: pool.checkout's moment and counts are these
                t,
                "client.acquired",
                client=client,
                conn=conn,
                backend_pid=10_000 + conn,
                wait_ms=round(wait, 3),
                **counts(),
            )
            schedule(t + rng.uniform(0.020, 0.060), "release", client)

        for client in range(CLIENTS):
            schedule(rng.uniform(0, 0.05), "request", client)
        t = 0.0
        while heap:
            t, _, kind, client = heapq.heappop(heap)
            while t >= next_stats:
                snapshot = counts()
                now_totals = totals()
                window = {
                    key: value - last_totals.get(key, 0)
                    for key, value in now_totals.items()
                    if key not in HIGH_WATER_MARKS
                }
                last_totals = now_totals
                out.emit(
                    next_stats,
                    "monitor.stats",
                    **snapshot,
                    oldest_wait_ms=0.0,
                    interval_s=1.0,
                    window=window,
                    checkouts_per_s=float(window_checkouts),
                    connects_per_s=float(window["connects"]),
                    utilisation=round(len(holding) / (POOL_SIZE + MAX_OVERFLOW), 4),
                    queue_jump_share=0.0 if window_checkouts else None,  # (jumps not simulated)
                    **{
                        **no_latencies(),
                        latency_key("wait_time"): figures(window_waits),
                        latency_key("use_time"): figures(window_uses),
                        latency_key("query_time"): figures(window_uses),
                    },
                    totals=now_totals,
                    server={"active": len(holding), "idle": len(idle)},
                )
                window_waits.clear()
                window_uses.clear()
                window_checkouts = 0
                next_stats += 1.0
            if not fault_done and out.count >= target_events // 2:
                fault_done = True
                began = t
                out.emit(
                    t,
                    "fault.restart",
                    at_s=round(began, 3),
                    began_t=round(began, 6),
                    method="server restart",
                    in_flight=0,
                )
                for conn in list(idle):
                    out.emit(
                        t,
                        "pool.close",
                        conn=conn,
                        backend_pid=10_000 + conn,
                        client=None,
                        cause="pool_invalidated",
                        **counts(),
                    )
                    open_conns -= 1
                    closes += 1
                idle.clear()
                out.emit(
                    t + 0.2,
                    "fault.restarted",
                    at_s=round(began, 3),
                    began_t=round(began, 6),
                    method="server restart",
                    downtime_ms=200.0,
                    terminated=None,
                )
            if kind == "request":
                if stopping:
                    continue
                if idle:
                    checkout(t, client, idle.popleft(), t)
                elif open_conns < POOL_SIZE + MAX_OVERFLOW:
                    conn = next_conn
                    next_conn += 1
                    open_conns += 1
                    max_open = max(max_open, open_conns)
                    connect_ms = rng.uniform(3, 8)
                    creates.append(connect_ms)
                    fields = counts()
                    if conn == 1:
                        out.emit(
                            t,
                            "pool.first_connect",
                            conn=conn,
                            backend_pid=10_000 + conn,
                            client=client,
                            **fields,
                        )
                    out.emit(
                        t,
                        "pool.connect",
                        conn=conn,
                        backend_pid=10_000 + conn,
                        client=client,
                        connect_ms=round(connect_ms, 3),
                        **fields,
                    )
                    checkout(t, client, conn, t)
                else:
                    waiting.append((client, t))
                    max_pending = max(max_pending, len(waiting))
            else:  # release
                conn, since = holding.pop(client)
                held = (t - since) * 1000
                window_uses.append(held)
                all_uses.append(held)
                out.emit(t, "client.released", client=client, conn=conn, held_ms=round(held, 3))
                if waiting:
                    next_client, asked = waiting.popleft()
                    checkout(t, next_client, conn, asked)
                elif open_conns > POOL_SIZE:
                    open_conns -= 1
                    closes += 1
                    out.emit(
                        t,
                        "pool.close",
                        conn=conn,
                        backend_pid=10_000 + conn,
                        client=client,
                        cause="overflow",
                        **counts(),
                    )
                else:
                    idle.append(conn)
                if out.count >= stop_after:
                    stopping = True
                if not stopping:
                    schedule(t + rng.expovariate(1 / 0.040), "request", client)
        end = t + 0.01
        for conn in list(idle):
            idle.popleft()
            open_conns -= 1
            closes += 1
            out.emit(
                end,
                "pool.close",
                conn=conn,
                backend_pid=10_000 + conn,
                client=None,
                cause="disposed",
                **counts(),
            )
        out.emit(
            end + 0.01,
            "run.end",
            summary={
                "elapsed_s": round(end, 3),
                "grace_s": 0.0,
                "clients": CLIENTS,
                **totals(),
                "checkouts_per_s": round(checkouts / end, 2),
                "requests_per_s": 0.0,
                "connects_per_s": round((next_conn - 1) / end, 2),
                "errors_by_kind": {},
                "reuse_ratio": round(checkouts / (next_conn - 1), 2),
                **no_latencies(),
                latency_key("wait_time"): figures(all_waits),
                latency_key("acquired_wait_time"): figures(all_waits),  # no timeouts
                latency_key("use_time"): figures(all_uses),
                latency_key("query_time"): figures(all_uses),
                latency_key("create_time"): figures(creates),
                "utilisation_mean": None,
                "utilisation_max": None,
                "interrupted": False,
                "queue_jump_share": 0.0,  # (queue jumps are not simulated: queue_jumps is 0)
                "clients_started_s": 0.05,
                "checkouts_per_client": fairness(per_client),
                "stop_reason": "iterations",
                "event_loop": "asyncio",
                "signal": None,
                "pool_state": counts(),
                "server_sessions": {},
            },
        )
        return out.count


def measure(command: list[str]) -> tuple[float, float, int]:
    """Runs a command; returns (wall seconds, peak RSS in MiB, exit status)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 and process.stderr is not None:
        sys.stderr.write(process.stderr.read().decode(errors="replace"))
    return elapsed, usage.ru_maxrss / 1024, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="keep the logs and reports in this directory")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="loadsim-bench-") as scratch:
        directory = arguments.keep or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        baseline = measure([sys.executable, "-c", "import loadsim.report.charts"])
        print(f"baseline (Python + matplotlib imported): peak RSS {baseline[1]:.0f} MiB")
        print(f"{'events':>10} {'log MiB':>8} {'synth s':>8} {'report s':>9} {'peak RSS MiB':>13}")
        for target in (arguments.events // 10, arguments.events):
            log = directory / f"bench-{target}.jsonl"
            started = time.perf_counter()
            written = synthesise(log, target)
            synthesis = time.perf_counter() - started
            elapsed, peak, status = measure(
                [
                    sys.executable,
                    "-m",
                    "loadsim",
                    "report",
                    str(log),
                    "--out",
                    str(directory / f"report-{target}"),
                ]
            )
            if status != 0:
                sys.exit(f"loadsim report failed with exit status {status}")
            size = log.stat().st_size / 2**20
            print(f"{written:>10,} {size:>8.0f} {synthesis:>8.1f} {elapsed:>9.1f} {peak:>13.0f}")
        elapsed, peak, status = measure(
            [
                sys.executable,
                "-m",
                "loadsim",
                "compare",
                str(log),
                "--out",
                str(directory / "compare"),
            ]
        )
        print(f"compare on the largest log: {elapsed:.1f} s, peak RSS {peak:.0f} MiB")
        if elapsed > 60:
            sys.exit("too slow: the report must take well under a minute")


if __name__ == "__main__":
    main()
