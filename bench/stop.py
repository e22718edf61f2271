"""Stop: how long after Ctrl-C a run with many clients or requests waiting ends. An open
workload at the highest rate (100,000 a second) on a pool of 5 keeps tens of thousands of
requests waiting (`max_in_flight` raised out of the way); with `--clients N`, a closed one of
N clients on a pool of 5 keeps all but five waiting. SIGINT comes after `--after` seconds, and
the time to the process's exit is printed with what was waiting, `--rounds` times.

    python bench/stop.py [--clients N] [--rounds 3] [--after 1.5] [--database-url URL]

Without --database-url the run starts its own embedded PostgreSQL (whose stop is included).

Measured on this project's 2-core machine (the machine's own PostgreSQL, other work running):
5 to 7 s and 4.3 s with some 18,000 to 28,000 requests in flight, before cancelled waiters
were handed to the pool in the order they queued (asyncio.Queue searches its line for each
one: quadratic otherwise) and the garbage collector paused for the wind-down (each full
collection looked at every request in flight again, 0.1 to 0.4 s each, and found nothing);
1.3 to 1.7 s after. Unwinding each waiter still cost some 70 µs (40 µs of it SQLAlchemy's
greenlet alone): with --clients, 1.7 to 2.3 s for 20,000 and 4.3 s for 50,000. Since the
waiters are stranded instead (loadsim/exiting.py): 0.3 to 0.4 s for 10,000 to 12,000 requests,
0.6 s for 20,000 clients and 0.6 to 1.1 s for 50,000.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIO = """\
[scenarios.flood]
description = "Far more requests than the pool can serve, all left waiting"
duration = "60s"
pool = { pool_size = 5, max_overflow = 0, pool_timeout = "1h" }
workload = { hold = "1ms" }
arrivals = { rate = 100000, max_in_flight = 200000 }
"""


CLIENTS = """\
[scenarios.crowd]
description = "Far more clients than the pool can serve, all but five waiting"
duration = "60s"
clients = {clients}
pool = {{ pool_size = 5, max_overflow = 0, pool_timeout = "1h" }}
workload = {{ hold = "1ms" }}
"""


def stop_once(
    file: Path, scenario: str, after: float, database_url: str | None
) -> tuple[float, int]:
    """Seconds from SIGINT to exit, and the clients or requests waiting then."""
    command = [sys.executable, "-m", "loadsim", "run", scenario, "--file", str(file), "-q"]
    if database_url:
        command += ["--database-url", database_url]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.readline()  # run.start
    time.sleep(after)
    signalled = time.monotonic()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    took = time.monotonic() - signalled
    if process.returncode != 130:
        sys.exit(f"the run ended with {process.returncode}: {stderr.decode()[-500:]}")
    summary = json.loads(stdout.decode().splitlines()[-1])["summary"]
    if scenario == "crowd":
        return took, summary["clients"] - 5
    return took, summary["requests"] - summary["dropped"] - summary["checkouts"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--after", type=float, default=1.5, help="seconds before SIGINT")
    parser.add_argument("--clients", type=int, help="a closed workload of this many clients")
    parser.add_argument("--database-url")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        file = Path(directory) / "stop.toml"
        closed = options.clients is not None
        file.write_text(CLIENTS.format(clients=options.clients) if closed else SCENARIO)
        scenario, what = ("crowd", "clients waiting") if closed else ("flood", "in flight")
        for round_number in range(1, options.rounds + 1):
            took, waiting = stop_once(file, scenario, options.after, options.database_url)
            print(f"round {round_number}: stopped {took:.2f} s after SIGINT, ~{waiting:,} {what}")


if __name__ == "__main__":
    main()
