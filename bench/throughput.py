"""Throughput: loadsim with full instrumentation against a bare SQLAlchemy loop, raw asyncpg's
pool and pgbench: same clients, same pool size, same server, one after another in one run, so
the ratios hold on a noisy machine. Goal: loadsim >= 0.9 x bare SQLAlchemy.

    python bench/throughput.py [--clients 100] [--pool 10] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from loadsim.database import EmbeddedPostgres, asyncpg_arguments


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    options = parser.parse_args()
    with EmbeddedPostgres(max_connections=200) as server:
        url = server.url.render_as_string(hide_password=False)
        figures: dict[str, float | None] = {}
        figures["bare SQLAlchemy"] = asyncio.run(
            bare_sqlalchemy(url, options.clients, options.pool, options.seconds)
        )
        figures["loadsim, every event"] = loadsim(
            url, options.clients, options.pool, options.seconds, None
        )
        figures["loadsim, --events 'monitor.*'"] = loadsim(
            url, options.clients, options.pool, options.seconds, "monitor.*"
        )
        try:
            import uvloop  # noqa: F401

            figures["loadsim, every event, uvloop"] = loadsim(
                url, options.clients, options.pool, options.seconds, None, loop="uvloop"
            )
        except ImportError:
            figures["loadsim, every event, uvloop"] = None
        figures["raw asyncpg pool"] = asyncio.run(
            raw_asyncpg(
                asyncpg_arguments(server.url), options.clients, options.pool, options.seconds
            )
        )
        figures["pgbench (C, 10 connections, no pool)"] = pgbench(
            server, options.clients, options.pool, options.seconds
        )
    base = figures["bare SQLAlchemy"] or 1.0
    print(f"SELECT 1, {options.clients} clients, pool of {options.pool}, {options.seconds:g}s each")
    for name, value in figures.items():
        shown = "not available" if value is None else f"{value:10,.0f}/s  {value / base:5.2f}x"
        print(f"  {name:<40} {shown}")
    ratio = (figures["loadsim, every event"] or 0) / base
    print(f"loadsim / bare SQLAlchemy = {ratio:.2f} (goal >= 0.90)")


if __name__ == "__main__":
    main()
