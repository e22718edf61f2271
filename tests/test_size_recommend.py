"""The recommendation of `loadsim size`, from given steps: the smallest pool meeting the
SLO, never past the knee; none met (and why); a fleet's limits against the server's
connections, and what one shared pool would save (checked against Erlang C)."""

from __future__ import annotations

from typing import Any

from loadsim.size.erlang import predict, smallest_pool
from loadsim.size.recommend import recommend

RATE, HOLD_MS = 800.0, 10.0
SLO = "wait_time_p99_ms < 25"


def queue_steps(sizes: list[int], repeats: int = 3, limit: float = 25.0) -> list[dict[str, Any]]:
    """Steps whose measured p99 wait is what M/M/c gives, with a little spread."""
    steps = []
    for size in sizes:
        model = predict(size, RATE, HOLD_MS).wait_percentile_ms(99)
        for repeat in range(repeats):
            value = model * (1 + 0.02 * (repeat - 1))
            steps.append(
                {
                    "kind": "queue",
                    "pool_size": size,
                    "repeat": repeat,
                    "checkouts_per_s": RATE,
                    "slo_value": value,
                    "slo_passed": value < limit,
                    "use_mean_ms": HOLD_MS,
                    "model_p99_wait_ms": model,
                }
            )
    return steps


def test_the_smallest_pool_meeting_the_slo() -> None:
    result = recommend(queue_steps([8, 9, 10, 12]), slo=SLO, knee=14, target_rate=RATE)
    assert result.met
    assert result.pool_size == 10 == smallest_pool(RATE, HOLD_MS, 25)  # p99 18.6 < 25 < 41.8
    assert result.max_overflow == 4  # bursts up to the knee
    assert "pool_size 10" in result.reason and "max_overflow 4" in result.reason
    assert "3 of 3" in result.reason


def test_a_majority_of_repeats_decides() -> None:
    steps = queue_steps([9, 10])
    for step in steps:
        if step["pool_size"] == 9 and step["repeat"] < 2:  # 2 of 3 repeats of 9 pass
            step["slo_passed"] = True
    assert recommend(steps, slo=SLO, knee=None, target_rate=RATE).pool_size == 9
    steps[0]["slo_passed"] = False  # now 1 of 3
    assert recommend(steps, slo=SLO, knee=None, target_rate=RATE).pool_size == 10


def test_no_size_meets_the_slo() -> None:
    steps = queue_steps([8, 9, 10], limit=1.0)
    result = recommend(steps, slo="wait_time_p99_ms < 1", knee=20, target_rate=RATE)
    assert not result.met and result.pool_size is None
    assert "no pool size measured meets wait_time_p99_ms < 1" in result.reason
    assert "the largest, 10" in result.reason and "measure larger pools" in result.reason
    past_knee = recommend(steps, slo="wait_time_p99_ms < 1", knee=9, target_rate=RATE)
    assert "the server, not the pool, is the limit" in past_knee.reason


def test_never_past_the_knee() -> None:
    result = recommend(queue_steps([8, 9, 10, 12]), slo=SLO, knee=9, target_rate=RATE)
    assert result.pool_size is None and not result.met
    assert "is 10, past the knee at 9" in result.reason


def test_a_fleet_within_the_servers_connections() -> None:
    steps = queue_steps([8, 9, 10, 12])
    result = recommend(
        steps, slo=SLO, knee=14, target_rate=RATE, instances=4, server_connections=50
    )
    assert result.pool_size == 10
    assert result.max_overflow == 50 // 4 - 10 == 2  # cut from 4 so that 4 x 12 <= 50
    assert result.fleet_connections == 48 <= 50
    # one pool for 4 x 800/s with the same p99 wait: Erlang C's own answer, fewer than 40
    target = predict(10, RATE, HOLD_MS).wait_percentile_ms(99)
    assert result.shared_pool_size == smallest_pool(4 * RATE, HOLD_MS, target)
    assert result.shared_pool_size is not None and result.shared_pool_size < 40
    assert result.shared_saving == 40 - result.shared_pool_size
    assert "PgBouncer" in result.reason


def test_a_fleet_that_cannot_fit() -> None:
    result = recommend(
        queue_steps([10]), slo=SLO, knee=None, target_rate=RATE, instances=6, server_connections=50
    )
    assert result.pool_size is None and not result.met
    assert "6 instances x pool_size 10 = 60 connections" in result.reason
    assert "allows 50" in result.reason


def test_without_a_rate_the_knee() -> None:
    steps = [
        {"kind": "capacity", "pool_size": size, "repeat": 0, "checkouts_per_s": rate}
        for size, rate in [(2, 100.0), (4, 180.0), (8, 200.0)]
    ]
    assert recommend(steps, slo=SLO, knee=4, target_rate=None).pool_size == 4
    unfitted = recommend(steps, slo=SLO, knee=None, target_rate=None)
    assert unfitted.pool_size == 8 and "highest throughput measured" in unfitted.reason


def test_a_knee_at_the_edge_of_the_sweep_is_said_to_be_one() -> None:
    steps = queue_steps([8, 9, 10, 12])
    result = recommend(steps, slo=SLO, knee=12, target_rate=RATE, edge=True)
    assert result.pool_size == 10 and result.max_overflow == 2
    assert "the largest size measured, 12 (no knee within the sweep)" in result.reason
    none = recommend(
        queue_steps([8, 9], limit=1.0), slo="wait_time_p99_ms < 1", knee=9, target_rate=RATE,
        edge=True,
    )  # fmt: skip
    assert "measure larger pools" in none.reason and "the server" not in none.reason
