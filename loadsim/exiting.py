"""How the `loadsim` process ends once a run has stopped for good with clients still waiting.

A run stopped by a signal or a closed output ends the process after it. Its clients waiting
for a connection hold nothing, yet unwinding each (a cancellation thrown through SQLAlchemy's
greenlet: some 40 µs with SQLAlchemy alone, 70 µs with loadsim's accounting) took 1.5 s for
20,000 of them and over 3 s for 50,000, and the interpreter's teardown half a second more to
free them. So, when the command's entry point allows it (`allow_stranding`), the run leaves
them where they are (`strand`): the pool is given a fresh queue so that none is ever handed a
connection, and asyncio forgets their tasks. Once the command has written and flushed all it
had to, `exit_process` ends the process with os._exit: the stranded tasks are never resumed,
cancelled or freed.

Only the entry point allows it: `cli.main` called in process (by tests) unwinds every task as
before. The standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

_allowed = False
#: The stranded tasks, referenced until the process ends: a pending task that the garbage
#: collector frees is reported ("Task was destroyed but it is pending!") and its coroutine
#: closed, which is the unwinding stranding avoids.
_stranded: list[asyncio.Task[Any]] = []


def allow_stranding() -> None:
    """The process ends through `exit_process` as soon as the command returns."""
    global _allowed
    _allowed = True


def may_strand() -> bool:
    return _allowed


def strand(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Leaves `tasks` pending for good: asyncio no longer counts them among its tasks, so the
    loop's close does not cancel them (where asyncio keeps no such count of its own tasks, as
    from Python 3.14 for its native ones, the close cancels them still: slower, not wrong)."""
    for task in tasks:
        _stranded.append(task)
        asyncio.tasks._unregister_task(task)


def exit_process(code: object) -> NoReturn:
    """Ends the process with `code` (SystemExit's: None is 0, a message is printed and is 1):
    at once, after flushing the standard streams, when tasks were stranded; otherwise as
    Python ends it."""
    if not _stranded:
        raise SystemExit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(status)
