"""The pool monitor in this process, on a real engine against the test server: each pool event
becomes a `pool.*` event naming the connection, its backend and the client, with the pool's
counts right after it. Events are captured unrendered (`CapturingSink`), so a test reads them
as dicts without running loadsim."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from loadsim.config.scenario import MonitorSettings, PoolConfig
from loadsim.run.monitor import current_client
from tests.helpers import Monitored


async def test_a_checkout_and_checkin_carry_the_conn_its_backend_and_the_counts(
    monitored: Monitored,
) -> None:
    monitor, sink = monitored(PoolConfig(pool_size=2, max_overflow=0))
    token = current_client.set(7)
    try:
        async with monitor.engine.connect() as connection:
            backend_pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar()
    finally:
        current_client.reset(token)

    (connect,) = sink.named("pool.connect")
    (checkout,) = sink.named("pool.checkout")
    (checkin,) = sink.named("pool.checkin")
    names = sink.names()
    assert names.index("pool.connect") < names.index("pool.checkout") < names.index("pool.checkin")
    for event in (connect, checkout, checkin):
        assert event["conn"] == 1  # the first connection of the run
        assert event["backend_pid"] == backend_pid  # the server's own pid for the session
        assert event["client"] == 7
        assert event["scenario"] == "test"
        assert event["connections_total"] == 1
        assert event["overflow"] == event["pending_requests"] == 0
    assert connect["connect_ms"] > 0
    assert (checkout["connections_used"], checkout["connections_idle"]) == (1, 0)
    assert (checkin["connections_used"], checkin["connections_idle"]) == (0, 1)
    assert 0 < connect["t"] <= checkout["t"] <= checkin["t"]
    assert monitor.counters.connects == 1 and monitor.counters.max_open == 1

    monitor.disposing = True  # as the runner says before disposing of the engine
    await monitor.engine.dispose()
    (close,) = sink.named("pool.close")
    assert (close["conn"], close["cause"], close["connections_total"]) == (1, "disposed", 0)
    assert monitor.counters.closes == 1


async def test_an_overflow_connection_is_closed_when_it_comes_back(
    monitored: Monitored,
) -> None:
    monitor, sink = monitored(PoolConfig(pool_size=1, max_overflow=1))
    first = await monitor.engine.connect()
    second = await monitor.engine.connect()
    checkouts = sink.named("pool.checkout")
    assert [event["conn"] for event in checkouts] == [1, 2]
    assert [event["overflow"] for event in checkouts] == [0, 1]
    assert checkouts[-1]["connections_used"] == 2
    await first.close()  # back into the pool's one place
    assert sink.named("pool.close") == []
    await second.close()  # the pool is full: the overflow connection is closed
    (close,) = sink.named("pool.close")
    assert (close["conn"], close["cause"]) == (2, "overflow")
    assert (close["connections_total"], close["overflow"]) == (1, 0)


async def test_a_connection_held_past_the_threshold_is_a_suspected_leak(
    monitored: Monitored,
) -> None:
    monitor, sink = monitored(
        PoolConfig(pool_size=1, max_overflow=0), MonitorSettings(leak_threshold=0.05)
    )
    token = current_client.set(3)
    try:
        connection = await monitor.engine.connect()
    finally:
        current_client.reset(token)
    monitor.check_leaks()
    assert sink.named("monitor.leak_suspected") == []  # not held long enough yet
    await asyncio.sleep(0.1)
    monitor.check_leaks()
    (suspected,) = sink.named("monitor.leak_suspected")
    assert (suspected["client"], suspected["conn"]) == (3, 1)
    assert suspected["held_ms"] >= 50 and suspected["threshold_ms"] == 50
    assert any("test_monitor.py" in frame for frame in suspected["acquired_at"])  # taken here
    await connection.close()
    (returned,) = sink.named("monitor.leak_returned")
    assert (returned["client"], returned["conn"]) == (3, 1)
    assert monitor.counters.leaks_suspected == 1
