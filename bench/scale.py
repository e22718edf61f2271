"""Scale: 1,000 / 10,000 / 50,000 clients waiting on a pool of 10. For each: peak memory per
client, event-loop lag p99 (loadsim's own `loop_lag_ms`), the time until every client had
asked for a connection, and checkouts per second. Goals: <= 16 KB per client; lag p99 <= 10 ms
at 10,000 clients.

    python bench/scale.py [--counts 1000,10000,50000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadsim.run.database import EmbeddedPostgres


def run(url: str, clients: int, seconds: float, directory: Path) -> tuple[dict[str, Any], int]:
    """One run in its own process; its summary and its peak resident memory in KB."""
    scenarios = directory / f"scale{clients}.toml"
    scenarios.write_text(
        f'[scenarios.scale]\nclients = {clients}\nduration = "{seconds}s"\n'
        'pool = { pool_size = 10, max_overflow = 0, pool_timeout = "1h" }\n'
        'workload = { hold = "10ms" }\n'
    )
    output = directory / f"scale{clients}.jsonl"
    script = (
        "import resource, runpy, sys\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_module('loadsim', run_name='__main__')\n"
        "finally:\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "loadsim",
            "run",
            "scale",
            "-f",
            str(scenarios),
            "--database-url",
            url,
            "-q",
            "--events",
            "monitor.*",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    peak_kb = int(result.stderr.strip().splitlines()[-1])
    return json.loads(output.read_text().splitlines()[-1])["summary"], peak_kb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,10000,50000")
    parser.add_argument("--seconds", type=float, default=10.0)
    options = parser.parse_args()
    counts = [int(count) for count in options.counts.split(",")]
    with EmbeddedPostgres(max_connections=100) as server, tempfile.TemporaryDirectory() as tmp:
        url = server.url.render_as_string(hide_password=False)
        _, baseline_kb = run(url, 10, options.seconds / 2, Path(tmp))
        print(
            f"pool of 10, 10 ms holds, {options.seconds:g}s; baseline (10 clients) "
            f"{baseline_kb / 1024:.0f} MB peak"
        )
        print(
            f"{'clients':>8} {'KB/client':>10} {'lag p99 ms':>11} {'lag max ms':>11} "
            f"{'all asked s':>12} {'checkouts/s':>12}"
        )
        for clients in counts:
            summary, peak_kb = run(url, clients, options.seconds, Path(tmp))
            per_client = (peak_kb - baseline_kb) / clients
            lag = summary["loop_lag_ms"]
            print(
                f"{clients:>8,} {per_client:>10.1f} {lag.get('p99', 0):>11.1f} "
                f"{lag.get('max', 0):>11.1f} {summary['clients_started_s'] or 0:>12.2f} "
                f"{summary['checkouts_per_s']:>12,.0f}"
            )
    print("goals: <= 16 KB per client; lag p99 <= 10 ms at 10,000 clients")


if __name__ == "__main__":
    main()
