"""Which events a run writes: `--events` patterns and LOG_LEVEL."""

from __future__ import annotations

import fnmatch

from loadsim.errors import ScenarioError
from loadsim.schema import (
    ALWAYS_WRITTEN,
    DEFAULT_EVENTS,
    ERROR_EVENTS,
    EVENT_NAMES,
    WARNING_EVENTS,
)

#: `--events all`: every event, those the default stream leaves out too.
ALL = "all"


def select_events(patterns: str | None) -> frozenset[str]:
    """`--events`: the event names matching comma-separated globs such as
    "monitor.*,run.*", or every event for `all`; without `--events` (None), the default
    stream. A pattern that matches no event is a ScenarioError."""
    if patterns is None:
        return DEFAULT_EVENTS
    selected: set[str] = set()
    for pattern in (part.strip() for part in patterns.split(",")):
        if not pattern:
            continue
        if pattern == ALL:
            selected |= EVENT_NAMES
            continue
        matched = {name for name in EVENT_NAMES if fnmatch.fnmatchcase(name, pattern)}
        if not matched:
            kinds = sorted({name.split(".")[0] + ".*" for name in EVENT_NAMES})
            raise ScenarioError(
                f"--events: {pattern!r} matches no event; try all, one of {', '.join(kinds)} "
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
