"""The event path alone: events per second through loadsim's EventLog (a cut-down structlog
bound logger, rendered by orjson) into a file and into a pipe, on one core; through the
writer process a run actually uses (what the run pays, and end to end); and, for
comparison, the same events with stdlib json and structlog's stock bound logger, as loadsim
first wrote them. Goal: >= 100,000 events/s.

    python bench/events.py [--events 200000]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tempfile
import time
from typing import IO, Any

import structlog

from loadsim.run.events import EventLog, EventSink
from loadsim.run.writer import EventWriter

FIELDS: dict[str, Any] = {
    "conn": 3,
    "backend_pid": 41234,
    "client": 17,
    "connections_total": 10,
    "connections_used": 7,
    "connections_idle": 3,
    "overflow": 0,
    "pending_requests": 5,
}


def rate(stream: IO[bytes], count: int) -> float:
    log = EventLog(EventSink([stream]), run_id="bench", scenario="events")
    started = time.perf_counter()
    for _ in range(count):
        log.emit("pool.checkout", **FIELDS)
    log.flush()
    return count / (time.perf_counter() - started)


def writer_rates(stream: IO[bytes], count: int) -> tuple[float, float]:
    """Through the writer process: events per second of the run's own CPU time (what the run
    pays; it does not wait for the writer unless the pipe is full), and events/s end to end
    (until the writer has written the last one)."""
    writer = EventWriter([stream])
    log = EventLog(writer, run_id="bench", scenario="events")
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(count):
        log.emit("pool.checkout", **FIELDS)
    writer.flush()
    run_cpu = time.process_time() - cpu_started
    writer.close()
    return count / run_cpu, count / (time.perf_counter() - started)


def stock_rate(stream: IO[bytes], count: int) -> float:
    """structlog's default BoundLogger with the stdlib json renderer: the slow way."""
    sink = EventSink([stream])
    log = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=json.dumps),
        ],
        context_class=dict,
    ).bind(run_id="bench", scenario="events", instance=0)
    started = time.perf_counter()
    for _ in range(count):
        sink.msg(log.info("pool.checkout", **FIELDS))
    sink.flush()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    count = parser.parse_args().events
    memory = rate(io.BytesIO(), count)
    with tempfile.TemporaryFile() as file:
        to_file = rate(file, count)
    reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert reader.stdin is not None
    to_pipe = rate(reader.stdin, count)
    reader.stdin.close()
    reader.wait()
    with tempfile.TemporaryFile() as file:
        run_side, end_to_end = writer_rates(file, count)
    with tempfile.TemporaryFile() as file:
        stock = stock_rate(file, count)
    print(f"{count:,} pool.checkout events")
    print(f"  loadsim EventLog -> memory   {memory:12,.0f} events/s")
    print(f"  loadsim EventLog -> file     {to_file:12,.0f} events/s")
    print(f"  loadsim EventLog -> pipe     {to_pipe:12,.0f} events/s")
    print(f"  through the writer process -> file {end_to_end:12,.0f} events/s end to end")
    print(f"  ... costing the run's own CPU      {run_side:12,.0f} events/s")
    print(
        f"  stock structlog + json -> file {stock:10,.0f} events/s "
        f"(loadsim is {to_file / stock:.1f}x faster)"
    )
    print("goal: >= 100,000 events/s")


if __name__ == "__main__":
    main()
