"""The one place loadsim reads (and once changes) SQLAlchemy's pool internals.

Two questions have no public answer: whether a connection being returned will be closed
because the pool's queue of idle connections is full (an overflow connection), and why the
pool is closing a connection it did not say why about (recycled at checkout, replaced because
its generation was invalidated, soft-invalidated). And one thing has no public way: to leave
the coroutines waiting for a connection waiting for good. `tests/test_pool_internals.py` pins
each against a real engine and server, so an upgrade that changes them fails there rather
than in the causes a run reports or in a stop.
"""

from __future__ import annotations

import time

from sqlalchemy.pool import ConnectionPoolEntry, Pool, QueuePool
from sqlalchemy.util.queue import Empty


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


def hand_nothing_to_waiters(pool: Pool) -> None:
    """Gives a QueuePool a fresh queue holding its idle connections: whoever waits on the
    old one is never handed a connection, whatever is returned from now on (a run stopping
    for good strands its waiters: loadsim/exiting.py). The pool works on as before for
    anyone who asks from now on."""
    if not isinstance(pool, QueuePool):
        return
    stale = pool._pool
    fresh = pool._queue_class(stale.maxsize, use_lifo=stale.use_lifo)
    while True:
        try:
            fresh.put(stale.get(False), False)
        except Empty:
            break
    pool._pool = fresh
