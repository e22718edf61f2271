"""Startup: how soon the commands that only read files answer. Each command runs `--rounds`
times; the time to its first byte of output (and to its exit) is the median, beside
`python -c pass` (the interpreter alone) and `python -c 'import typer'` (the command-line
library alone, which brings pydantic), measured in the same rounds, interleaved.

    python bench/startup.py [--rounds 15]

Measured on this project's 2-core machine, medians to first output, first alone and then with
six other jobs running: `python -c pass` 0.03 and 0.04 s; `import typer` 0.17 and 0.25 s;
`--help`, `list`, `show normal`, `validate` and `schema` 0.23 to 0.31 s alone, 0.42 to
0.72 s loaded (1.3 to 2.9 times typer alone). None of the read-only commands imports SQLAlchemy,
asyncpg or matplotlib (tests/test_layers.py): what they load is Python, typer (which brings
pydantic: some 0.15 s of the whole) and loadsim's configuration layer. `report` loads
matplotlib and draws: its time is the charts'.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
LOADSIM = [sys.executable, "-m", "loadsim"]


def commands(directory: Path) -> dict[str, list[str]]:
    log = directory / "saturation.jsonl"
    with gzip.open(REPOSITORY / "tests" / "data" / "saturation.jsonl.gz", "rb") as packed:
        log.write_bytes(packed.read())
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import typer'": [sys.executable, "-c", "import typer"],
        "loadsim --help": [*LOADSIM, "--help"],
        "loadsim list": [*LOADSIM, "list"],
        "loadsim show normal": [*LOADSIM, "show", "normal"],
        "loadsim validate": [*LOADSIM, "validate", str(REPOSITORY / "loadsim" / "scenarios.toml")],
        "loadsim schema": [*LOADSIM, "schema"],
        "loadsim k8s": [*LOADSIM, "k8s", "normal", "--shards", "3", "--image", "loadsim:1"],
        "loadsim report": [*LOADSIM, "report", str(log), "--out", str(directory / "report")],
    }


def timed(command: list[str], directory: Path) -> tuple[float, float]:
    """Seconds to the first byte on stdout or stderr (or to exit, if silent), and to exit."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=directory
    )
    assert process.stdout is not None
    process.stdout.read(1)
    first = time.perf_counter() - started
    process.stdout.read()
    if process.wait() != 0:
        sys.exit(f"{' '.join(command)} failed with {process.returncode}")
    return first, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        table = commands(directory)
        firsts: dict[str, list[float]] = {label: [] for label in table}
        ends: dict[str, list[float]] = {label: [] for label in table}
        for _ in range(options.rounds):  # interleaved: drift hits every command alike
            for label, command in table.items():
                first, end = timed(command, directory)
                firsts[label].append(first)
                ends[label].append(end)
                shutil.rmtree(directory / "report", ignore_errors=True)
    bare = statistics.median(firsts["python -c pass"])
    width = max(map(len, table))
    print(f"{'command':<{width}}  first output   exit      ratio to python -c pass")
    for label in table:
        first, end = statistics.median(firsts[label]), statistics.median(ends[label])
        print(f"{label:<{width}}  {first:8.3f} s  {end:8.3f} s  {first / bare:8.1f}")


if __name__ == "__main__":
    main()
