"""One palette for every chart: the same kind of event has the same colour everywhere.

A checkout is blue in the timeline, the pool chart and the latency chart; a connect is green;
waiting clients are purple; an invalidation is red; a fault is magenta. Clients get colours of
their own (the timeline colours each checkout by the client holding it), from a qualitative
palette that avoids the kind colours where it can; runs being compared get a third set.
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
    "alert": "#fdbf6f",  # a monitor alert (saturated, server disagrees)
    "limit": "#000000",  # pool_size and pool_size + max_overflow lines
    "utilisation": "#1f77b4",
    "server": "#737373",  # the server's own count of our sessions
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

#: Client colours (the timeline's bars): tab20 without its blue, green, red and purple pairs'
#: darker halves, which are kind colours.
_CLIENTS: Final[tuple[str, ...]] = (
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#fdd0a2",
    "#dbdb8d",
    "#9edae5",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#17becf",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
    "#3182bd",
)
NO_CLIENT: Final[str] = "#bdbdbd"

#: Runs being compared, in order.
_RUNS: Final[tuple[str, ...]] = (
    "#1b9e77",
    "#d95f02",
    "#7570b3",
    "#e6ab02",
    "#66a61e",
    "#a6761d",
    "#e7298a",
    "#666666",
)


def client_colour(client: int) -> str:
    """The colour of a client's checkouts (client ids cycle through the palette)."""
    if client < 0:
        return NO_CLIENT
    return _CLIENTS[client % len(_CLIENTS)]


def client_palette_size() -> int:
    return len(_CLIENTS)


def run_colour(index: int) -> str:
    return _RUNS[index % len(_RUNS)]


def close_colour(cause: str) -> str:
    return CLOSE_CAUSE.get(cause, KIND["close"])
