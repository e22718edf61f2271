"""One palette for every chart: the same kind of event has the same colour everywhere.

A checkout is blue in the timeline, the pool chart and the latency chart; a connect is green;
waiting clients are purple; overflow is orange; an invalidation is red; a fault is magenta; a
monitor alert is dark gold (`SEMANTIC`: the colours the README promises). Clients get colours
of their own (the timeline colours each checkout by the client holding it), from a palette
with none of those hues: teals and greys (tests/test_report_truth.py checks
that each is far from every semantic colour, in hue and in CIEDE2000). Runs being compared get
a third set.
"""

from __future__ import annotations

from typing import Final

#: Colours by kind of event or quantity.
KIND: Final[dict[str, str]] = {
    "checkout": "#1f77b4",  # a connection in use (checked out); use time
    "idle": "#a6cee3",  # a connection open in the pool, not in use
    "open": "#d9d9d9",  # a connection's lifetime, behind its checkouts
    "connect": "#2ca02c",  # the pool opened a connection; connect time
    "overflow": "#ff7f0e",  # connections beyond pool_size
    "waiting": "#6a3d9a",  # clients waiting for a connection; wait time
    "close": "#525252",  # the pool closed a connection (generic)
    "invalidate": "#d62728",  # the pool invalidated a connection
    "soft_invalidate": "#f4a582",
    "detach": "#8c564b",  # a connection detached from the pool
    "leak": "#bcbd22",  # a checkout held past the leak threshold
    "timeout": "#a50f15",  # a client's pool TimeoutError
    "error": "#000000",  # a connect or query error
    "fault": "#e7298a",  # an injected fault (server restart, terminated backends)
    "alert": "#8a7a00",  # a monitor alert (saturated, server disagrees): dark gold
    "limit": "#000000",  # pool_size and pool_size + max_overflow lines
    "utilisation": "#1f77b4",
    "server": "#737373",  # the server's own count of our sessions
    "memory": "#7f3b08",  # our backends' memory on the server (Pss)
    "client_memory": "#4d4d4d",  # loadsim's own memory
}

#: The colours that mean one thing in every chart, whatever else is drawn: no client or run
#: colour may look like one of them.
SEMANTIC: Final[dict[str, str]] = {
    kind: KIND[kind]
    for kind in ("checkout", "connect", "waiting", "overflow", "invalidate", "fault", "alert")
}

#: Colours of `pool.close` marks by cause; a cause not listed uses KIND["close"].
CLOSE_CAUSE: Final[dict[str, str]] = {
    "overflow": KIND["overflow"],
    "recycled": "#17becf",
    "invalidated": KIND["invalidate"],
    "pool_invalidated": KIND["fault"],
    "soft_invalidated": KIND["soft_invalidate"],
    "disposed": "#969696",
    "returned": KIND["close"],
    "detached": KIND["detach"],
    "closed": KIND["close"],
}

#: Marker shapes for the timeline's marks, by kind.
MARKER: Final[dict[str, str]] = {
    "connect": "|",
    "close": "s",
    "invalidate": "X",
    "soft_invalidate": "x",
    "detach": "D",
    "leak": "^",
    "cancelled": "v",
}

#: Shades for percentiles p50, p95, p99 (light to dark) of a kind's colour.
WAIT_SHADES: Final[tuple[str, ...]] = ("#cab2d6", "#9e7cc1", "#6a3d9a")
USE_SHADES: Final[tuple[str, ...]] = ("#9ecae1", "#4292c6", "#08519c")

#: Client colours (the timeline's bars, checkouts per client): the one hue none of the
#: semantic colours is near (teal) and greys, most distinct first.
_CLIENTS: Final[tuple[str, ...]] = (
    "#44aa99",  # teal
    "#404040",  # charcoal
    "#a9a9a9",  # grey
    "#1d6b60",  # dark teal
    "#8dd3c7",  # light teal
    "#707070",  # mid grey
    "#008b8b",  # dark cyan
    "#2f4f4f",  # slate
    "#c0e8e0",  # pale teal
)
NO_CLIENT: Final[str] = "#bdbdbd"

#: Runs being compared, in order: colours from the client palette's darker half (none of them
#: semantic), each with its own line style and marker, so that no two look alike.
_RUNS: Final[tuple[str, ...]] = (
    "#404040",
    "#44aa99",
    "#a9a9a9",
    "#1d6b60",
    "#008b8b",
    "#707070",
    "#8dd3c7",
    "#2f4f4f",
)
_RUN_LINES: Final[tuple[str, ...]] = ("-", "--", "-.", ":")
_RUN_MARKERS: Final[tuple[str, ...]] = ("o", "s", "^", "D", "v", "P", "X", "*")


def client_colour(client: int) -> str:
    """The colour of a client's checkouts (client ids cycle through the palette)."""
    if client < 0:
        return NO_CLIENT
    return _CLIENTS[client % len(_CLIENTS)]


def client_palette_size() -> int:
    return len(_CLIENTS)


def run_colour(index: int) -> str:
    return _RUNS[index % len(_RUNS)]


def run_style(index: int) -> tuple[str, str, str]:
    """A run's colour, line style and marker."""
    return (
        _RUNS[index % len(_RUNS)],
        _RUN_LINES[index % len(_RUN_LINES)],
        _RUN_MARKERS[index % len(_RUN_MARKERS)],
    )


def run_palette() -> tuple[str, ...]:
    return _RUNS


def client_palette() -> tuple[str, ...]:
    return _CLIENTS


def close_colour(cause: str) -> str:
    return CLOSE_CAUSE.get(cause, KIND["close"])
