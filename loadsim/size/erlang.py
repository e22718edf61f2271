"""Erlang C (M/M/c): a pool of c connections as c servers, checkouts arriving at rate lambda and
holding a connection for a mean of 1/mu.

`a = lambda/mu` is the offered load in connections. With `a < c`, the share of checkouts that
wait is `C(c, a)`; the wait of those that do is exponential with rate `cmu - lambda`, so
`E[Wq] = C / (cmu - lambda)` and `P(Wq > t) = C*e^{-(cmu-lambda)t}`. Allen-Cunneen's correction for
holds and arrivals that are not exponential scales the waits by `(ca² + cs²) / 2`, the
squared coefficients of variation of the gaps between arrivals and of the holds (M/M/c: 1
and 1); here the tail keeps its exponential shape with the mean so corrected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loadsim.config.limits import POSTGRES_MAX_CONNECTIONS


def erlang_c(servers: int, offered: float) -> float:
    """C(c, a): the probability that an arrival waits (1 when a ≥ c: the queue grows)."""
    if servers < 1:
        raise ValueError(f"servers must be at least 1, got {servers}")
    if offered < 0:
        raise ValueError(f"offered load must be at least 0, got {offered}")
    if offered == 0:
        return 0.0
    if offered >= servers:
        return 1.0
    # Erlang B by its stable recurrence, then C from B.
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered * blocking / (k + offered * blocking)
    rho = offered / servers
    return blocking / (1 - rho + rho * blocking)


@dataclass(frozen=True)
class QueuePrediction:
    """What Erlang C (with Allen-Cunneen's factor) predicts for one pool size."""

    pool_size: int
    arrival_rate: float  # lambda, checkouts per second
    mean_hold_ms: float  # 1/mu
    offered: float  # a = lambda/mu, connections busy on average
    utilisation: float  # rho = a/c
    stable: bool  # a < c: otherwise the queue grows without bound
    p_wait: float  # C(c, a)
    mean_wait_ms: float  # E[Wq]
    decay_per_ms: float  # the tail's rate: P(Wq > t) = p_wait * e^{-decay*t}

    def p_wait_longer(self, ms: float) -> float:
        """P(Wq > t)."""
        if not self.stable:
            return 1.0
        return self.p_wait * math.exp(-self.decay_per_ms * ms)

    def wait_percentile_ms(self, percentile: float) -> float:
        """The wait that `percentile`% of checkouts do not exceed (0 when so many do not
        wait at all; infinite when the queue grows)."""
        if not self.stable:
            return math.inf
        beyond = 1 - percentile / 100
        if self.p_wait <= beyond or self.decay_per_ms <= 0:
            return 0.0
        return math.log(self.p_wait / beyond) / self.decay_per_ms


def predict(
    pool_size: int,
    arrival_rate: float,
    mean_hold_ms: float,
    *,
    arrival_cv2: float = 1.0,
    hold_cv2: float = 1.0,
) -> QueuePrediction:
    """Erlang C for `pool_size` connections at `arrival_rate` per second and holds of
    `mean_hold_ms` on average; `arrival_cv2` and `hold_cv2` (squared coefficients of
    variation, 1 for exponential) give Allen-Cunneen's correction."""
    if arrival_rate < 0 or mean_hold_ms <= 0:
        raise ValueError("the arrival rate must be at least 0 and the mean hold above 0")
    per_ms = arrival_rate / 1000
    offered = per_ms * mean_hold_ms
    stable = offered < pool_size
    p_wait = erlang_c(pool_size, offered)
    factor = (arrival_cv2 + hold_cv2) / 2
    if stable:
        drain = pool_size / mean_hold_ms - per_ms  # cmu - lambda, per ms
        decay = drain / factor if factor > 0 else math.inf
        mean_wait = p_wait / decay if decay != math.inf else 0.0
    else:  # the queue grows without end
        decay, mean_wait = 0.0, math.inf
    return QueuePrediction(
        pool_size,
        arrival_rate,
        mean_hold_ms,
        offered,
        offered / pool_size,
        stable,
        p_wait,
        mean_wait,
        decay,
    )


def smallest_pool(
    arrival_rate: float,
    mean_hold_ms: float,
    p99_wait_ms: float,
    *,
    arrival_cv2: float = 1.0,
    hold_cv2: float = 1.0,
    largest: int = POSTGRES_MAX_CONNECTIONS,
) -> int | None:
    """The fewest connections whose predicted p99 wait is at most `p99_wait_ms`."""
    start = max(1, math.floor(arrival_rate / 1000 * mean_hold_ms) + 1)
    for size in range(start, largest + 1):
        prediction = predict(
            size, arrival_rate, mean_hold_ms, arrival_cv2=arrival_cv2, hold_cv2=hold_cv2
        )
        if prediction.wait_percentile_ms(99) <= p99_wait_ms:
            return size
    return None
