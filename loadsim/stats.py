"""Aggregation: what the clients measured, summarised for `run.end` and the summary table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loadsim.monitor import PoolCounters


@dataclass
class Tally:
    """Count, sum and maximum of a series of milliseconds."""

    count: int = 0
    total: float = 0.0
    maximum: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value > self.maximum:
            self.maximum = value

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": round(self.mean, 3), "max": round(self.maximum, 3)}


@dataclass
class ClientMeasurements:
    """What the clients saw: waits, holds, timeouts, errors, and checkouts per client."""

    clients: int
    wait_ms: Tally = field(default_factory=Tally)
    hold_ms: Tally = field(default_factory=Tally)
    timeouts: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    checkouts_per_client: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.checkouts_per_client = [0] * self.clients

    def error(self, kind: str) -> None:
        self.errors += 1
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1


def summarise(
    measured: ClientMeasurements, pool: PoolCounters, elapsed: float, **extra: Any
) -> dict[str, Any]:
    per_client = sorted(measured.checkouts_per_client)
    checkouts = measured.wait_ms.count
    return {
        "elapsed_s": round(elapsed, 3),
        "clients": measured.clients,
        "checkouts": checkouts,
        "checkouts_per_s": round(checkouts / elapsed, 2) if elapsed > 0 else 0.0,
        "connects": pool.connects,
        "closes": pool.closes,
        "invalidations": pool.invalidations,
        "timeouts": measured.timeouts,
        "errors": measured.errors,
        "errors_by_kind": dict(measured.errors_by_kind),
        "wait_ms": measured.wait_ms.as_dict(),
        "hold_ms": measured.hold_ms.as_dict(),
        "connect_time_ms": {
            "mean": round(pool.connect_time_total_ms / pool.connects, 3) if pool.connects else 0.0
        },
        "max_open": pool.max_open,
        "leaks_suspected": pool.leaks,
        "leaks_reclaimed": pool.reclaimed,
        "leaks_collected": pool.collected,
        "max_pending_requests": pool.max_waiting,
        "checkouts_per_client": {
            "min": per_client[0] if per_client else 0,
            "median": per_client[len(per_client) // 2] if per_client else 0,
            "max": per_client[-1] if per_client else 0,
        },
        "reuse_ratio": round(checkouts / pool.connects, 2) if pool.connects else None,
        **extra,
    }


@dataclass
class Window:
    """Rates over the interval since the previous `monitor.stats` snapshot."""

    started: float = 0.0
    _last: dict[str, int] = field(default_factory=dict)

    def snapshot(
        self, measured: ClientMeasurements, pool: PoolCounters, now: float
    ) -> dict[str, Any]:
        totals = {
            "checkouts": measured.wait_ms.count,
            "connects": pool.connects,
            "closes": pool.closes,
            "timeouts": measured.timeouts,
            "errors": measured.errors,
            "invalidations": pool.invalidations,
            "leaks": pool.leaks,
        }
        seconds = max(now - self.started, 1e-9)
        window = {key: value - self._last.get(key, 0) for key, value in totals.items()}
        self._last, self.started = totals, now
        return {
            "interval_s": round(seconds, 3),
            "window": window,
            "checkouts_per_s": round(window["checkouts"] / seconds, 2),
            "connects_per_s": round(window["connects"] / seconds, 2),
            "totals": totals,
        }
