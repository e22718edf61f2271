"""What loadsim reads from SQLAlchemy's pool internals (`loadsim/run/pool_internals.py`),
pinned against a real engine and server: an upgrade that changes them fails here."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool

from loadsim.run.database import asyncpg_arguments
from loadsim.run.engine import parse_database_url
from loadsim.run.pool_internals import close_cause, hand_nothing_to_waiters, queue_is_full

NewEngine = Callable[..., AsyncEngine]


@pytest.fixture
async def new_engine(database_url: str) -> AsyncIterator[NewEngine]:
    """Engines on the test server, each with sessions named apart; disposed afterwards."""
    engines: list[AsyncEngine] = []

    def make(**options: Any) -> AsyncEngine:
        name = f"loadsim-test:{uuid.uuid4().hex[:8]}"
        engine = create_async_engine(
            parse_database_url(database_url),
            connect_args={"server_settings": {"application_name": name}},
            **options,
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.dispose()


def record_causes(engine: AsyncEngine) -> list[str | None]:
    """`close_cause` of every connection the pool closes, as it closes it."""
    causes: list[str | None] = []
    pool = engine.sync_engine.pool
    event.listen(
        engine.sync_engine, "close", lambda _dbapi, record: causes.append(close_cause(pool, record))
    )
    return causes


async def test_only_a_return_to_a_full_queue_closes_the_connection(new_engine: NewEngine) -> None:
    engine = new_engine(poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=1)
    pool = engine.sync_engine.pool
    closed = record_causes(engine)
    first, second = await engine.connect(), await engine.connect()
    assert not queue_is_full(pool)  # nothing idle yet: the first one back is kept
    await first.close()
    assert queue_is_full(pool) and closed == []
    await second.close()  # the overflow connection: closed on return
    assert len(closed) == 1


async def test_null_pool_closes_every_return(new_engine: NewEngine) -> None:
    engine = new_engine(poolclass=NullPool)
    closed = record_causes(engine)
    assert queue_is_full(engine.sync_engine.pool)
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    assert len(closed) == 1


async def test_a_connection_past_pool_recycle_is_recycled_at_checkout(
    new_engine: NewEngine,
) -> None:
    engine = new_engine(poolclass=AsyncAdaptedQueuePool, pool_size=1, pool_recycle=1)
    causes = record_causes(engine)
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    await asyncio.sleep(1.2)
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    assert causes == ["recycled"]


async def test_a_soft_invalidated_connection_is_replaced_at_checkout(
    new_engine: NewEngine,
) -> None:
    engine = new_engine(poolclass=AsyncAdaptedQueuePool, pool_size=1)
    causes = record_causes(engine)
    async with engine.connect() as connection:
        (await connection.get_raw_connection()).invalidate(soft=True)
    assert causes == []
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    assert causes == ["soft_invalidated"]


async def test_one_disconnect_invalidates_the_generation(
    new_engine: NewEngine, database_url: str
) -> None:
    engine = new_engine(poolclass=AsyncAdaptedQueuePool, pool_size=2)
    causes = record_causes(engine)
    first, second = await engine.connect(), await engine.connect()
    names = {(await first.execute(text("SELECT current_setting('application_name')"))).scalar()}
    await first.close()
    await second.close()  # two idle connections
    server = await asyncpg.connect(**asyncpg_arguments(make_url(database_url)))
    try:
        await server.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            names.pop(),
        )
    finally:
        await server.close()
    async with engine.connect() as connection:
        with pytest.raises(exc.DBAPIError):
            await connection.execute(text("SELECT 1"))  # dead: the pool's generation ends
    before = len(causes)
    async with engine.connect() as connection:  # the other idle one, opened before that
        await connection.execute(text("SELECT 1"))
    assert causes[before:] == ["pool_invalidated"]


async def test_a_fresh_queue_hands_nothing_to_those_waiting_on_the_old_one(
    new_engine: NewEngine,
) -> None:
    """What a stop that strands its waiters relies on: once the pool has a fresh queue, a
    connection returned goes to whoever asks from now on, never to a coroutine that was
    already waiting; and the idle connections move with the queue."""
    engine = new_engine(poolclass=AsyncAdaptedQueuePool, pool_size=2, max_overflow=0)
    opened: list[object] = []
    event.listen(engine.sync_engine, "connect", lambda dbapi, record: opened.append(record))
    idle, held = await engine.connect(), await engine.connect()
    await idle.close()  # one idle in the queue, one checked out
    taken = await engine.connect()  # the idle one, so that a waiter must wait
    waiter = asyncio.create_task(engine.connect().start())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    hand_nothing_to_waiters(engine.sync_engine.pool)
    await held.close()
    await taken.close()
    await asyncio.sleep(0.2)
    assert not waiter.done()  # two connections handed back, none to the waiter
    first, second = await engine.connect(), await engine.connect()  # at once, both idle
    assert len(opened) == 2  # the pool's own connections: none opened anew
    await first.close()
    await second.close()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
