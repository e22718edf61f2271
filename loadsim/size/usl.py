"""The Universal Scalability Law: throughput against concurrency (here, connections).

    X(N) = gamma*N / (1 + alpha*(N-1) + beta*N*(N-1))

gamma is the throughput of one connection, alpha contention (the share of the work that is
serial), beta coherency (the cost of connections keeping each other in step: past the peak,
more connections lower throughput). Fitted by linear least squares (numpy's `lstsq`) on
Gunther's linearisation `N/X = 1/gamma + (alpha/gamma)(N-1) + (beta/gamma)N(N-1)`, which is
exact in the parameters; a coefficient that comes out negative has no physical meaning and
is fixed at 0 and the rest refitted. Rows are weighted so that every point's relative error counts
alike (noise in throughput is a share of it, not a fixed amount).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The knee: the smallest pool reaching this share of the best throughput.
KNEE_SHARE = 0.95


@dataclass(frozen=True)
class UslFit:
    gamma: float
    alpha: float
    beta: float
    r_squared: float
    points: int

    def throughput(self, connections: float) -> float:
        n = connections
        return self.gamma * n / (1 + self.alpha * (n - 1) + self.beta * n * (n - 1))

    @property
    def peak(self) -> float:
        """N*: the concurrency of the highest throughput (infinite when beta = 0)."""
        if self.beta <= 0:
            return math.inf
        return math.sqrt(max(1 - self.alpha, 0.0) / self.beta)

    @property
    def ceiling(self) -> float:
        """The most throughput any concurrency reaches: X(N*), or gamma/alpha as N grows
        with beta = 0 (infinite with neither)."""
        if self.beta > 0:
            return self.throughput(max(self.peak, 1.0))
        return self.gamma / self.alpha if self.alpha > 0 else math.inf

    def knee(self, largest: int) -> int:
        """The smallest whole pool size whose throughput is at least KNEE_SHARE of the best
        at any size up to `largest` (or up to N*, if that is smaller): past it, more
        connections buy almost no throughput."""
        top = largest if not math.isfinite(self.peak) else min(largest, max(1, round(self.peak)))
        sizes = np.arange(1, max(top, 1) + 1)
        values = (
            self.gamma * sizes / (1 + self.alpha * (sizes - 1) + self.beta * sizes * (sizes - 1))
        )
        best = float(values.max())
        return int(sizes[np.argmax(values >= KNEE_SHARE * best)])


def fit_usl(connections: Sequence[float], throughput: Sequence[float]) -> UslFit:
    """The USL through measured (N, X) points: at least three distinct N, X > 0."""
    n = np.asarray(connections, dtype=float)
    x = np.asarray(throughput, dtype=float)
    if n.shape != x.shape or n.ndim != 1:
        raise ValueError("connections and throughput must be sequences of the same length")
    if np.any(n < 1) or np.any(x <= 0) or not np.all(np.isfinite(x)):
        raise ValueError("every point needs N >= 1 and a throughput above 0")
    if len(np.unique(n)) < 3:
        raise ValueError("the fit needs at least three different pool sizes")
    y = n / x
    columns = {"alpha": n - 1, "beta": n * (n - 1)}
    free = ["alpha", "beta"]
    while True:
        design = np.column_stack([np.ones_like(n), *(columns[name] for name in free)])
        # Each row weighted by 1/y: noise in X is relative, and so is the noise in N/X.
        solution, *_ = np.linalg.lstsq(design / y[:, None], np.ones_like(y), rcond=None)
        inverse_gamma, rest = float(solution[0]), dict(zip(free, solution[1:], strict=True))
        negative = [name for name in free if rest[name] < 0]
        if not negative or inverse_gamma <= 0:
            break
        free.remove(min(negative, key=lambda name: rest[name]))
    if inverse_gamma <= 0:
        raise ValueError("the points do not fit the USL (throughput of one connection <= 0)")
    gamma = 1 / inverse_gamma
    alpha = max(float(rest.get("alpha", 0.0)), 0.0) * gamma
    beta = max(float(rest.get("beta", 0.0)), 0.0) * gamma
    fitted = UslFit(gamma, alpha, beta, 0.0, len(n))
    predicted = np.array([fitted.throughput(value) for value in n])
    total = float(np.sum((x - x.mean()) ** 2))
    residual = float(np.sum((x - predicted) ** 2))
    r_squared = 1 - residual / total if total > 0 else 1.0
    return UslFit(gamma, alpha, beta, round(r_squared, 4), len(n))
