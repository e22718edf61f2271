"""Records the run logs the report tests read, with this checkout's loadsim.

    .venv/bin/python tests/data/record.py                  # loadsim's own embedded server
    .venv/bin/python tests/data/record.py --database-url postgresql://user@host/db
    .venv/bin/python tests/data/record.py exhaustion       # only the runs named

Run it again whenever what `loadsim run` writes changes (a new schema_version, an event or a
field added, renamed or removed): `tests/test_report_fresh.py` fails until you do, saying
so. It takes about half a minute, then commit the new `tests/data/*.jsonl.gz`.

What is recorded is `RECORDED_RUNS` in tests/helpers.py: each run is `loadsim run ARGS
--output NAME.jsonl`, gzipped (deterministically: no name or time in the header) into
NAME.jsonl.gz here. The `recorded` fixture (tests/conftest.py) unpacks them for the tests.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:  # run as a script: make `tests.helpers` importable
    sys.path.insert(0, str(REPOSITORY))

from tests.helpers import DATA, RECORDED_RUNS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--database-url", help="the server to record against (default: an embedded one)"
    )
    names = [run.name for run in RECORDED_RUNS]
    parser.add_argument(
        "names", nargs="*", help=f"record only these runs (default: all): {', '.join(names)}"
    )
    arguments = parser.parse_args()
    unknown = set(arguments.names) - set(names)
    if unknown:
        parser.error(f"no recorded run named {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory() as scratch:
        for run in RECORDED_RUNS:
            if arguments.names and run.name not in arguments.names:
                continue
            log = run.record(Path(scratch), arguments.database_url)
            packed = DATA / f"{run.name}.jsonl.gz"
            packed.write_bytes(gzip.compress(log.read_bytes(), compresslevel=9, mtime=0))
            print(f"{packed.relative_to(REPOSITORY)}: {describe(log)}")


def describe(log: Path) -> str:
    """What a log holds, to see at a glance that it is what the tests expect."""
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    checkouts = Counter(e["scenario"] for e in events if e["event"] == "client.acquired")
    version = events[0]["schema_version"]
    shown = ", ".join(f"{scenario} {count} checkouts" for scenario, count in checkouts.items())
    return f"schema_version {version}, {len(events)} events ({shown})"


if __name__ == "__main__":
    main()
