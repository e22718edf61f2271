"""hdrhistogram, as `loadsim/run/histogram.py` uses it: a fleet's merged figures are those of
one histogram holding every value (the latency tests pin counting, resetting and percentiles)."""

from __future__ import annotations

import random

from loadsim.run.histogram import merged_figures
from loadsim.run.metrics import Latency


def test_merged_instances_give_the_figures_of_one_run() -> None:
    rng = random.Random(5)
    instances, whole = [Latency(), Latency(), Latency()], Latency()
    for index, instance in enumerate(instances):
        for _ in range(2000 * (index + 1)):
            value = rng.expovariate(1 / (50.0 * (index + 1)))
            instance.add(value)
            whole.add(value)
    figures = [instance.run_figures() for instance in instances]
    merged = merged_figures(
        [instance.encoded() for instance in instances],
        [(int(one["count"]), one["mean"]) for one in figures],
    )
    expected = whole.run_figures()
    assert merged.keys() == expected.keys()
    for key in expected.keys() - {"mean"}:
        assert merged[key] == expected[key], key  # exact: the same counts, merged
    assert abs(merged["mean"] - expected["mean"]) < 0.01  # from rounded per-instance means
