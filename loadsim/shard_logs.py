"""Whether a log is a shard's own (`loadsim run --shard I/N`), told from its first and last
lines: `report` and `compare` merge such logs before they read them. The standard library
only, so that a command that finds none loads nothing of the run side."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import IO


def shard_runs(sources: Sequence[str]) -> dict[str, list[str]]:
    """The shard logs among `sources`, by the run they are of (in the order given)."""
    runs: dict[str, list[str]] = {}
    for source in sources:
        run_id = shard_run_id(source)
        if run_id is not None:
            runs.setdefault(run_id, []).append(source)
    return runs


def shard_run_id(source: str) -> str | None:
    """The run id of a shard's own log (`run --shard`), or None for any other log: its first
    event a run.start of an instance of a fleet, its last not the run.summary that the log
    of a whole fleet (`--instances`, `merge`) ends with. Standard input is read only once:
    never taken for a shard's log."""
    if source == "-":
        return None
    try:
        with open(source, "rb") as stream:
            first = json.loads(stream.readline())
            last = _last_line(stream)
    except (OSError, ValueError):
        return None  # (the report says what is wrong with it)
    if not isinstance(first, dict) or first.get("event") != "run.start":
        return None
    if not isinstance(first.get("instance"), int) or (first.get("instances") or 1) < 2:
        return None
    if b'"event":"run.summary"' in last.replace(b" ", b""):
        return None
    run_id = first.get("run_id")
    return run_id if isinstance(run_id, str) else None


def _last_line(stream: IO[bytes], chunk: int = 1 << 16) -> bytes:
    """The last line of a file, read from its end."""
    position, tail = stream.seek(0, os.SEEK_END), b""
    while position > 0:
        step = min(chunk, position)
        position -= step
        stream.seek(position)
        tail = stream.read(step) + tail
        body = tail.rstrip(b"\n")
        if b"\n" in body or position == 0:
            return body.rsplit(b"\n", 1)[-1]
    return b""
