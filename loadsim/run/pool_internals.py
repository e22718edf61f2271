"""The one place loadsim reads SQLAlchemy's pool internals.

Two questions have no public answer: whether a connection being returned will be closed
because the pool's queue of idle connections is full (an overflow connection), and why the
pool is closing a connection it did not say why about (recycled at checkout, replaced because
its generation was invalidated, soft-invalidated). `tests/test_pool_internals.py` pins each
answer against a real engine and server, so an upgrade that changes them fails there rather
than in the causes a run reports.
"""

from __future__ import annotations

import time

from sqlalchemy.pool import ConnectionPoolEntry, Pool, QueuePool


def queue_is_full(pool: Pool) -> bool:
    """Whether a connection returned now would be closed rather than kept: a QueuePool whose
    queue already holds `pool_size` idle connections (any other pool closes every return)."""
    if not isinstance(pool, QueuePool):
        return True
    queue = pool._pool
    return bool(queue.maxsize > 0 and queue.qsize() >= queue.maxsize)


def close_cause(pool: Pool, record: ConnectionPoolEntry) -> str | None:
    """Why the pool is closing `record`'s connection, when its age or generation says so:
    "recycled" (older than `pool_recycle`), "pool_invalidated" (opened before the pool's
    last invalidation), "soft_invalidated"; None when neither tells."""
    started: float | None = getattr(record, "starttime", None)
    if started is None:
        return None
    recycle: int = pool._recycle
    if recycle > -1 and time.time() - started > recycle:
        return "recycled"
    if pool._invalidate_time > started:
        return "pool_invalidated"
    if getattr(record, "_soft_invalidate_time", 0) > started:
        return "soft_invalidated"
    return None
