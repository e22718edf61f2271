"""Clients in this process, on a real monitored engine against the test server: what a loop
client does (wait, acquire, hold, release) as events and metrics, a pool timeout that is
recorded rather than raised, and a connect to a server that is not there, said in words.
Events are captured unrendered (`CapturingSink`)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from loadsim.config.scenario import Distribution, PoolConfig, Workload
from loadsim.run.engine import create_engine, parse_database_url
from loadsim.run.metrics import RunMetrics
from loadsim.run.monitor import PoolMonitor
from loadsim.run.workload import ClientFleet, plan_clients
from tests.helpers import CapturingSink, Monitored


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


def free_tcp_port() -> int:
    """A local TCP port nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("where", ["unix socket", "tcp"])
async def test_a_connect_to_a_server_that_is_not_there_says_so(where: str, tmp_path: Path) -> None:
    """A connect that finds nothing listening (the unix socket a stopped server removed, a
    TCP port that refuses) is a connect error whose message says what it means, with the
    driver's own exception and message beside it; the client carries on."""
    if where == "unix socket":  # a directory where no server's socket is
        url, error = f"postgresql://postgres@/test?host={tmp_path}", "FileNotFoundError"
    else:
        url, error = (
            f"postgresql://postgres@127.0.0.1:{free_tcp_port()}/test",
            ("ConnectionRefusedError"),
        )
    engine = create_engine(parse_database_url(url), PoolConfig(pool_size=1), "loadsim-test")
    sink = CapturingSink()
    metrics = RunMetrics(clients=1, capacity=1, started=time.perf_counter())
    monitor = PoolMonitor(engine, sink.log(), metrics)
    monitor.attach()
    workload = Workload(clients=1, duration=None, iterations=2, query="SELECT 1")
    clients = plan_clients(workload, ())
    fleet = ClientFleet(engine, monitor, monitor.events, workload, metrics, 1, clients)
    try:
        await asyncio.gather(*(fleet.run_client(client) for client in clients))
    finally:
        await engine.dispose()

    errors = sink.named("client.error")
    assert len(errors) == 2  # both iterations tried, neither raised
    for event in errors:
        assert (event["phase"], event["conn"], event["error"]) == ("connect", None, error)
        message = event["message"]
        assert message.startswith(f"the server is not accepting connections ({error}: "), message
        assert message.endswith(")") and "[Errno" in message, message  # the driver's own words
    assert metrics.errors_by_kind == {f"connect:{error}": 2}


async def test_clients_start_in_batches_and_a_stop_during_start_up_ends_the_run(
    monitored: Monitored,
) -> None:
    """Clients are started START_BATCH a turn of the loop (so that the loop serves its I/O and
    a stop request between batches). A stop while they start starts no more, and the run is
    done once every task started has ended, even tasks cancelled before their first step
    (200,000 clients once hung a stopped run here: their `finally` never ran)."""
    from loadsim.run.workload import START_BATCH

    clients_count = 3 * START_BATCH + 7
    monitor, _ = monitored(PoolConfig(pool_size=1, max_overflow=0, pool_timeout=30), clients=2)
    workload = Workload(
        clients=clients_count, duration=None, iterations=1, hold=Distribution("fixed", 0.01)
    )
    all_done = asyncio.Event()
    clients = plan_clients(workload, ())
    fleet = ClientFleet(
        monitor.engine,
        monitor,
        monitor.events,
        workload,
        monitor.metrics,
        1,
        clients,
        on_all_done=all_done.set,
    )
    tasks: list[asyncio.Task[None]] = []
    async with asyncio.TaskGroup() as group:
        starting = group.create_task(fleet.start_clients(tasks))
        await asyncio.sleep(0)  # the starter's first batch
        assert len(tasks) == START_BATCH
        fleet.stopping = True
        for task in tasks:  # the last batch's have not yet taken a step
            task.cancel()
        await asyncio.wait_for(all_done.wait(), 10)
        await starting
    assert len(tasks) == START_BATCH
    assert all(task.done() for task in tasks)
    assert monitor.metrics.clients_started_s is None  # not every client started
