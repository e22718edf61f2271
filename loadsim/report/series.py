"""Containers whose size does not grow with the length of a log.

- `LogHistogram`: durations in logarithmic buckets (100 per decade, 1 µs to ~3 h), for
  distributions and percentiles within 2.4 % of the true value.
- `PeakSeries`: a quantity over time, as the peak and the last value in each of at most
  `max_buckets` equal time windows; the windows double in width as the log gets longer.
- `Sampled`: rows of numbers in compact typed arrays; past `cap` rows it keeps every second
  row and then records every second row from then on (then every fourth, ...), so a chart of
  a very long log shows an even sample and says so.
- `Bars`: intervals on lanes (checkouts on connections). Past `cap`, intervals of a lane that
  are less than a small gap apart are merged into one (which counts them), the gap doubling
  as needed, so that busy and idle time stay true at the resolution of a chart; only when
  merging cannot help (a NullPool run: one interval per lane) does it thin evenly.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

# ---------------------------------------------------------------------------- histogram

_MIN_MS = 0.001
_PER_DECADE = 100
_DECADES = 10
_BUCKETS = _PER_DECADE * _DECADES + 2  # [0, MIN], the log buckets, and everything above
_LOG_MIN = math.log10(_MIN_MS)


class LogHistogram:
    """Counts of durations (milliseconds) in logarithmic buckets, with exact count, sum, max."""

    __slots__ = ("count", "counts", "max", "sum")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        if value != value or value < 0:  # NaN or negative: not a duration
            return
        if value <= _MIN_MS:
            index = 0
        else:
            index = int((math.log10(value) - _LOG_MIN) * _PER_DECADE) + 1
            if index >= _BUCKETS:
                index = _BUCKETS - 1
        self.counts[index] += 1
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100), as the geometric middle of its bucket (NaN if empty)."""
        if not self.count:
            return math.nan
        rank = max(1, math.ceil(self.count * q / 100))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                low, high = bucket_edges(index)
                middle = math.sqrt(max(low, _MIN_MS / 10) * high)
                return min(middle, self.max)
        return self.max

    def nonzero(self) -> list[tuple[float, float, int]]:
        """(low, high, count) of every non-empty bucket, lowest first."""
        return [(*bucket_edges(i), c) for i, c in enumerate(self.counts) if c]


def bucket_edges(index: int) -> tuple[float, float]:
    """The [low, high) range of a LogHistogram bucket, in milliseconds."""
    if index == 0:
        return 0.0, _MIN_MS
    low = 10 ** (_LOG_MIN + (index - 1) / _PER_DECADE)
    if index == _BUCKETS - 1:
        return low, math.inf
    return low, 10 ** (_LOG_MIN + index / _PER_DECADE)


# -------------------------------------------------------------------------- peak series

_FIELDS = 4  # used, total, overflow, pending


class PeakSeries:
    """The pool's counts over time: per time window, the peak and the last value of each of
    `connections_used`, `connections_total`, `overflow` and `pending_requests`."""

    def __init__(self, max_buckets: int = 1500, width_s: float = 0.001) -> None:
        self.max_buckets = max_buckets
        self.width = width_s
        self._buckets: list[list[int] | None] = []
        self.points = 0

    def add(self, t: float, used: int, total: int, overflow: int, pending: int) -> None:
        index = int(t / self.width) if t > 0 else 0
        while index >= 2 * self.max_buckets:
            self._coarsen()
            index = int(t / self.width)
        buckets = self._buckets
        if index >= len(buckets):
            buckets.extend([None] * (index + 1 - len(buckets)))
        self.points += 1
        bucket = buckets[index]
        if bucket is None:
            buckets[index] = [used, total, overflow, pending, used, total, overflow, pending]
            return
        if used > bucket[0]:
            bucket[0] = used
        if total > bucket[1]:
            bucket[1] = total
        if overflow > bucket[2]:
            bucket[2] = overflow
        if pending > bucket[3]:
            bucket[3] = pending
        bucket[4] = used
        bucket[5] = total
        bucket[6] = overflow
        bucket[7] = pending

    def _coarsen(self) -> None:
        old = self._buckets
        merged: list[list[int] | None] = []
        for i in range(0, len(old), 2):
            first = old[i]
            second = old[i + 1] if i + 1 < len(old) else None
            if first is None or second is None:
                merged.append(first if second is None else second)
            else:
                merged.append([max(first[k], second[k]) for k in range(_FIELDS)] + second[_FIELDS:])
        self._buckets = merged
        self.width *= 2

    def peaks(self) -> tuple[list[float], list[list[int]]]:
        """Window start times, and per field (used, total, overflow, pending) the peak in each
        window; a window without events holds the last value before it. The value a window
        starts with counts towards its peak: five clients waiting whose waits all end early
        in a window were five at its start (drawn as four, the peak after its first event,
        a stall's step understated the queue)."""
        times: list[float] = []
        columns: list[list[int]] = [[] for _ in range(_FIELDS)]
        last = [0] * _FIELDS
        for index, bucket in enumerate(self._buckets):
            times.append(index * self.width)
            if bucket is None:
                for k in range(_FIELDS):
                    columns[k].append(last[k])
            else:
                for k in range(_FIELDS):
                    columns[k].append(max(bucket[k], last[k]))
                last = bucket[_FIELDS:]
        return times, columns


# ------------------------------------------------------------------------------ sampled


class Sampled:
    """Rows of numbers in typed arrays (one per column), evenly thinned past `cap` rows."""

    def __init__(self, typecodes: str, cap: int) -> None:
        self.columns = [array(code) for code in typecodes]
        self.cap = cap
        self.stride = 1
        self.seen = 0

    def append(self, *row: float) -> None:
        seen = self.seen
        self.seen = seen + 1
        if seen % self.stride:
            return
        for column, value in zip(self.columns, row, strict=True):
            column.append(value)  # type: ignore[arg-type]
        if len(self.columns[0]) > self.cap:
            self.columns = [column[::2] for column in self.columns]
            self.stride *= 2

    def __len__(self) -> int:
        return len(self.columns[0])

    @property
    def thinned(self) -> bool:
        return self.stride > 1

    def column(self, index: int) -> Sequence[float]:
        return self.columns[index]


# --------------------------------------------------------------------------------- bars

#: The client of a merged bar whose checkouts were made by several clients.
SEVERAL_CLIENTS = -2

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def merge_close(
    starts: Floats, ends: Floats, groups: Ints, clients: Ints, counts: Ints, gap: float
) -> tuple[Floats, Floats, Ints, Ints, Ints]:
    """Merges intervals of the same group that are at most `gap` apart. A merged interval
    counts the intervals it holds; its client is theirs if they share one, else
    SEVERAL_CLIENTS. Returns the merged (starts, ends, groups, clients, counts)."""
    if len(starts) == 0:
        return starts, ends, groups, clients, counts
    order = np.lexsort((starts, groups))
    s, e, g, c, n = starts[order], ends[order], groups[order], clients[order], counts[order]
    span = float(e.max() - s.min()) + 1.0
    base = float(s.min())
    # running end within each group (groups are sorted; the offset keeps them apart)
    offset = (g - g.min()).astype(np.float64) * (span + gap + 1.0)
    running = np.maximum.accumulate((e - base) + offset) - offset + base
    new = np.ones(len(s), dtype=bool)
    new[1:] = (g[1:] != g[:-1]) | (s[1:] - running[:-1] > gap)
    first = np.flatnonzero(new)
    merged_clients = np.minimum.reduceat(c, first)
    mixed = merged_clients != np.maximum.reduceat(c, first)
    merged_clients[mixed] = SEVERAL_CLIENTS
    return (
        s[first],
        np.maximum.reduceat(e, first),
        g[first],
        merged_clients,
        np.add.reduceat(n, first),
    )


class Bars:
    """Intervals on lanes (start, end, lane, client, how many checkouts), at most `cap`."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.start = array("d")
        self.end = array("d")
        self.lane = array("q")
        self.client = array("q")
        self.count = array("q")
        self.gap = 0.0  # intervals of a lane this close are merged (0: none are)
        self.stride = 1  # past merging, one interval in `stride` is kept
        self.seen = 0
        self._last: dict[int, int] = {}  # lane → index of its latest interval

    def __len__(self) -> int:
        return len(self.start)

    @property
    def merged(self) -> bool:
        return self.gap > 0

    @property
    def thinned(self) -> bool:
        return self.stride > 1

    def append(self, start: float, end: float, lane: int, client: int) -> None:
        self.seen += 1
        if self.stride > 1 and self.seen % self.stride:
            return
        if self.gap > 0:
            index = self._last.get(lane)
            if index is not None and start - self.end[index] <= self.gap:
                if end > self.end[index]:
                    self.end[index] = end
                self.count[index] += self.stride
                if self.client[index] != client:
                    self.client[index] = SEVERAL_CLIENTS
                return
        self._last[lane] = len(self.start)
        self.start.append(start)
        self.end.append(end)
        self.lane.append(lane)
        self.client.append(client)
        self.count.append(self.stride)
        if len(self.start) > self.cap:
            self._compact()

    def arrays(self) -> tuple[Floats, Floats, Ints, Ints, Ints]:
        return (
            np.frombuffer(self.start, dtype=np.float64),
            np.frombuffer(self.end, dtype=np.float64),
            np.frombuffer(self.lane, dtype=np.int64),
            np.frombuffer(self.client, dtype=np.int64),
            np.frombuffer(self.count, dtype=np.int64),
        )

    def _compact(self) -> None:
        arrays = self.arrays()
        starts, ends = arrays[0].copy(), arrays[1].copy()
        lanes, clients, counts = arrays[2].copy(), arrays[3].copy(), arrays[4].copy()
        span = max(float(ends.max() - starts.min()), 1e-3)
        target = self.cap // 2
        while len(starts) > target and self.gap < span / 200:
            self.gap = max(self.gap * 2, span / 20_000)
            starts, ends, lanes, clients, counts = merge_close(
                starts, ends, lanes, clients, counts, self.gap
            )
        if len(starts) > target:  # merging cannot help: thin evenly, in time order
            order = np.argsort(starts, kind="stable")[::2]
            starts, ends, lanes, clients = starts[order], ends[order], lanes[order], clients[order]
            counts = counts[order] * 2
            self.stride *= 2
        order = np.argsort(starts, kind="stable")
        self.start = array("d", starts[order].tobytes())
        self.end = array("d", ends[order].tobytes())
        self.lane = array("q", lanes[order].tobytes())
        self.client = array("q", clients[order].tobytes())
        self.count = array("q", counts[order].tobytes())
        self._last = {int(lane): index for index, lane in enumerate(self.lane)}
