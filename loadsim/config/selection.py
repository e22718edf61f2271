"""Which events a run writes: `--events` patterns and LOG_LEVEL."""

from __future__ import annotations

import fnmatch

from loadsim.errors import ScenarioError
from loadsim.schema import ALWAYS_WRITTEN, ERROR_EVENTS, EVENT_NAMES, WARNING_EVENTS


def select_events(patterns: str) -> frozenset[str]:
    """`--events`: the event names matching comma-separated globs such as
    "monitor.*,run.*"; a pattern that matches no event is a ScenarioError."""
    selected: set[str] = set()
    for pattern in (part.strip() for part in patterns.split(",")):
        if not pattern:
            continue
        matched = {name for name in EVENT_NAMES if fnmatch.fnmatchcase(name, pattern)}
        if not matched:
            kinds = sorted({name.split(".")[0] + ".*" for name in EVENT_NAMES})
            raise ScenarioError(
                f"--events: {pattern!r} matches no event; try one of {', '.join(kinds)} "
                "or a full name such as pool.checkout"
            )
        selected |= matched
    if not selected:
        raise ScenarioError("--events: give at least one pattern, such as 'monitor.*,run.*'")
    return frozenset(selected | ALWAYS_WRITTEN)


def wanted_events(level: str) -> frozenset[str]:
    """The events written at a LOG_LEVEL: everything at debug and info, problems above."""
    if level == "warning":
        return WARNING_EVENTS | ALWAYS_WRITTEN
    if level == "error":
        return ERROR_EVENTS | ALWAYS_WRITTEN
    return EVENT_NAMES
