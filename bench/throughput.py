"""Throughput: loadsim with full instrumentation against a bare SQLAlchemy loop, raw asyncpg's
pool and pgbench: same clients, same pool size, same server. The SQLAlchemy runs alternate over
several rounds and each ratio is the median of the rounds' own ratios, so that it holds on a
noisy machine. Goal: loadsim's default stream (no --events: two lines a checkout) >= 0.9 x
bare SQLAlchemy; `--events all` (six) and `--events 'monitor.*'` (none) are beside it.

    python bench/throughput.py [--clients 100] [--pool 10] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from loadsim.run.database import EmbeddedPostgres, asyncpg_arguments


async def bare_sqlalchemy(url: str, clients: int, pool: int, seconds: float) -> float:
    engine = create_async_engine(
        url, poolclass=AsyncAdaptedQueuePool, pool_size=pool, max_overflow=0, pool_timeout=300
    )
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    await engine.dispose()
    return done / elapsed


async def raw_asyncpg(
    arguments: dict[str, object], clients: int, pool: int, seconds: float
) -> float:
    connections = await asyncpg.create_pool(min_size=pool, max_size=pool, **arguments)
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with connections.acquire() as connection:
                await connection.execute("SELECT 1")
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    await connections.close()
    return done / elapsed


def loadsim(
    url: str, clients: int, pool: int, seconds: float, events: str | None, loop: str = "asyncio"
) -> float:
    with tempfile.TemporaryDirectory() as directory:
        scenarios = Path(directory) / "bench.toml"
        scenarios.write_text(
            f'[scenarios.bench]\nclients = {clients}\nduration = "{seconds}s"\n'
            f"pool = {{ pool_size = {pool}, max_overflow = 0, pool_timeout = 300 }}\n"
            'workload = { query = "SELECT 1" }\n'
        )
        output = Path(directory) / "run.jsonl"
        command = [
            sys.executable,
            "-m",
            "loadsim",
            "run",
            "bench",
            "-f",
            str(scenarios),
            "--database-url",
            url,
            "-q",
            "--output",
            str(output),
            "--loop",
            loop,
        ]
        if events:
            command += ["--events", events]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads(output.read_text().splitlines()[-1])["summary"]
        return float(summary["checkouts_per_s"])


def pgbench(server: EmbeddedPostgres, clients: int, pool: int, seconds: float) -> float | None:
    binary = shutil.which("pgbench") or str(server._bin / "pgbench")
    if not Path(binary).exists():
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("SELECT 1;\n")
    assert server.directory is not None
    result = subprocess.run(
        [
            binary,
            "-n",
            "-f",
            script.name,
            "-c",
            str(pool),
            "-j",
            "2",
            "-T",
            str(int(seconds)),
            "-h",
            str(server.directory),
            "-U",
            "postgres",
            "postgres",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in result.stdout.splitlines():
        if line.startswith("tps"):
            return float(line.split("=")[1].split()[0])
    return None


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0, help="each run, each round")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    clients, pool, seconds = options.clients, options.pool, options.seconds
    with EmbeddedPostgres(max_connections=200) as server:
        url = server.url.render_as_string(hide_password=False)
        # The SQLAlchemy runs alternate, round after round, and each loadsim figure is divided
        # by the bare figure of its own round: on a shared machine the speed drifts by a
        # factor of 1.5 within minutes, and only ratios taken side by side survive that.
        runs: dict[str, Callable[[], float]] = {
            "bare SQLAlchemy": lambda: asyncio.run(bare_sqlalchemy(url, clients, pool, seconds)),
            "loadsim, default stream": lambda: loadsim(url, clients, pool, seconds, None),
            "loadsim, --events all": lambda: loadsim(url, clients, pool, seconds, "all"),
            "loadsim, --events 'monitor.*'": lambda: loadsim(
                url, clients, pool, seconds, "monitor.*"
            ),
        }
        if uvloop_available():
            runs["bare SQLAlchemy, uvloop"] = lambda: bare_with_uvloop(url, clients, pool, seconds)
            runs["loadsim, default stream, uvloop"] = lambda: loadsim(
                url, clients, pool, seconds, None, loop="uvloop"
            )
        figures: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(options.rounds):
            for name, run in runs.items():
                figures[name].append(run())
        asyncpg_rate = asyncio.run(
            raw_asyncpg(asyncpg_arguments(server.url), clients, pool, seconds)
        )
        pgbench_rate = pgbench(server, clients, pool, seconds)
    bare = figures["bare SQLAlchemy"]
    print(
        f"SELECT 1, {clients} clients, pool of {pool}; {options.rounds} rounds of "
        f"{seconds:g}s per run; median checkouts/s, and the median of each round's ratio"
    )
    for name, rates in figures.items():
        base = figures["bare SQLAlchemy, uvloop"] if name.endswith("uvloop") else bare
        ratio = paired_ratio(rates, base)
        print(f"  {name:<40} {statistics.median(rates):10,.0f}/s  {ratio:5.2f}x")
    for name, rate in (
        ("raw asyncpg pool", asyncpg_rate),
        ("pgbench (C, 10 connections, no pool)", pgbench_rate),
    ):
        shown = (
            "not available"
            if rate is None
            else f"{rate:10,.0f}/s  {rate / statistics.median(bare):5.2f}x"
        )
        print(f"  {name:<40} {shown}")
    for name in ("loadsim, default stream", "loadsim, --events 'monitor.*'"):
        ratio = paired_ratio(figures[name], bare)
        each = zip(figures[name], bare, strict=True)
        rounds = ", ".join(f"{rate / base:.3f}" for rate, base in each)
        print(f"{name} / bare SQLAlchemy = {ratio:.3f} (goal >= 0.90; rounds {rounds})")


def paired_ratio(rates: list[float], references: list[float]) -> float:
    """The median over rounds of each round's rate divided by its reference."""
    return statistics.median(rate / base for rate, base in zip(rates, references, strict=True))


def bare_with_uvloop(url: str, clients: int, pool: int, seconds: float) -> float:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bare_sqlalchemy(url, clients, pool, seconds))


if __name__ == "__main__":
    main()
