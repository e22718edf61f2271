"""Clients in this process, on a real monitored engine against the test server: what a loop
client does (wait, acquire, hold, release) as events and metrics, and a pool timeout that is
recorded rather than raised. Events are captured unrendered (`CapturingSink`)."""

from __future__ import annotations

import asyncio

from loadsim.config.scenario import Distribution, PoolConfig, Workload
from loadsim.run.workload import ClientFleet, plan_clients
from tests.helpers import Monitored


async def test_loop_clients_take_turns_on_one_connection(monitored: Monitored) -> None:
    monitor, sink = monitored(PoolConfig(pool_size=1, max_overflow=0), clients=2)
    workload = Workload(clients=2, duration=None, iterations=3, hold=Distribution("fixed", 0.02))
    clients = plan_clients(workload, ())
    fleet = ClientFleet(
        monitor.engine, monitor, monitor.events, workload, monitor.metrics, 1, clients
    )
    await asyncio.gather(*(fleet.run_client(client) for client in clients))

    for client in (0, 1):
        own = [event for event in sink.events if event.get("client") == client]
        names = [event["event"] for event in own if event["event"].startswith("client.")]
        assert names == ["client.waiting", "client.acquired", "client.released"] * 3
        for index, event in enumerate(own):
            if event["event"] == "client.acquired":  # the checkout just before it, its conn
                checkout = next(e for e in reversed(own[:index]) if e["event"] == "pool.checkout")
                assert event["conn"] == checkout["conn"] == 1
    released = sink.named("client.released")
    assert min(event["held_ms"] for event in released) >= 20  # pg_sleep(0.02)
    # One connection for two clients: whoever asks while the other holds it waits.
    assert max(event["wait_ms"] for event in sink.named("client.acquired")) >= 10
    assert len(sink.named("pool.connect")) == 1
    metrics = monitor.metrics
    assert metrics.checkouts == 6 and metrics.checkouts_per_client == [3, 3]
    assert metrics.timeouts == metrics.errors == 0


async def test_a_pool_timeout_is_an_event_and_the_client_goes_on(monitored: Monitored) -> None:
    monitor, sink = monitored(PoolConfig(pool_size=1, max_overflow=0, pool_timeout=0.2), clients=2)
    workload = Workload(clients=2, duration=None, iterations=1, hold=Distribution("fixed", 0.5))
    clients = plan_clients(workload, ())
    fleet = ClientFleet(
        monitor.engine, monitor, monitor.events, workload, monitor.metrics, 1, clients
    )
    await asyncio.gather(*(fleet.run_client(client) for client in clients))

    (timeout,) = sink.named("client.timeout")
    assert "QueuePool limit of size 1 overflow 0 reached" in timeout["message"]
    assert timeout["wait_ms"] >= 190
    assert timeout["connections_total"] == timeout["connections_used"] == 1
    (acquired,) = sink.named("client.acquired")
    assert acquired["client"] != timeout["client"]
    assert monitor.metrics.timeouts == 1 and monitor.metrics.checkouts == 1
