"""The signals that stop loadsim, and what they do while no run is there to stop.

SIGINT (Ctrl-C), SIGTERM and SIGHUP (a closed terminal, a dropped ssh session) stop loadsim,
and it exits 128 + the signal: 130, 143, 129. While a run is going its lifecycle handles them
(`loadsim/run/lifecycle.py`: the run stops cleanly). Before that, from the first line loadsim
runs (`__main__.py`, and `cli.py` for the console script) until the lifecycle takes over,
and again for any command that is not a run, there is nothing to stop: loadsim exits at once,
quietly, never with a KeyboardInterrupt traceback from whatever it was importing.

A signal that was ignored when loadsim started (SIGHUP under `nohup`, SIGINT in a background
job of a non-interactive shell) stays ignored. The standard library only: this module is
imported before anything else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import termios
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

#: The signals that stop a run (and loadsim): each exits 128 + its number.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Those loadsim leaves alone when they were ignored when it started.
_IGNORABLE = (signal.SIGINT, signal.SIGHUP)

Handler = Callable[[int, FrameType | None], Any]
#: What each signal's handler was before `install` replaced it.
Saved = dict[int, Any]


def exit_status(name: str) -> int:
    """The exit status for a run stopped by the signal `name` ("SIGINT"): 128 + its number."""
    return 128 + signal.Signals[name].value


def exit_quietly(signum: int, frame: FrameType | None) -> None:
    """Nothing to stop: exit now, with 128 + the signal, and no traceback."""
    os._exit(128 + signum)


def install(handler: Handler) -> Saved:
    """`handler` for every stop signal not ignored at start; what was there before, for
    `restore`. Nothing, outside the main thread (signals are the main thread's)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    saved: Saved = {}
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if signum in _IGNORABLE and current is signal.SIG_IGN:
            continue
        saved[signum] = signal.signal(signum, handler)
    return saved


def restore(saved: Saved) -> None:
    for signum, handler in saved.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def quit_quietly() -> Saved:
    """Until a run takes over: a stop signal exits at once, quietly (`exit_quietly`)."""
    return install(exit_quietly)


@contextlib.contextmanager
def interrupting() -> Iterator[list[str]]:
    """While it lasts, a stop signal raises KeyboardInterrupt, as SIGINT does by default: to
    end a wait the code inside expects to be cut short (the writer waiting for a reader after
    the run). The list it yields gets the signal's name."""
    caught: list[str] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        caught.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    saved = install(interrupt)
    try:
        yield caught
    finally:
        restore(saved)


def let_go_of_a_hung_up_terminal() -> None:
    """After SIGHUP: standard streams that were a terminal which has hung up (a closed
    window, a dropped ssh session: every write would fail with EIO) now point at /dev/null,
    so that what the run still says on its way out (the dashboard, the summary) cannot
    fail it. A terminal that is still there is kept."""
    for fd in (0, 1, 2):
        try:
            termios.tcgetattr(fd)
        except termios.error as error:
            if error.args and error.args[0] == errno.EIO:  # hung up (ENOTTY: not a tty)
                with contextlib.suppress(OSError):
                    nowhere = os.open(os.devnull, os.O_RDWR)
                    os.dup2(nowhere, fd)
                    os.close(nowhere)
        except (OSError, ValueError):
            continue


def handles_stop_signals(pid: int) -> bool | None:
    """Whether the process `pid` has loadsim's handlers yet (it catches SIGTERM, which the
    interpreter never does by itself); None when that cannot be told (not Linux, gone).
    A fleet passes a signal on to an instance only once it does: before, the signal would
    interrupt the interpreter's own start-up, which says so with a traceback."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    caught = int(line.split(":", 1)[1].strip(), 16)
                    return bool(caught & (1 << (signal.SIGTERM - 1)))
    except (OSError, ValueError):
        return None
    return None
