"""The scenario loader, fuzzed: whatever TOML people write, it either loads or says why in the
project's own error. Nothing else may escape (no KeyError, TypeError, OverflowError...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadsim.config.scenario import POOL_KEYS, WORKLOAD_KEYS, parse_scenarios
from loadsim.config.settings import Flags, resolve
from loadsim.errors import ScenarioError

_KEYS = [
    *POOL_KEYS,
    *WORKLOAD_KEYS,
    "description",
    "preset",
    "hold",
    "think",
    "query",
    "in_transaction",
    "restart",
    "terminate",
    "terminate_which",
    "idle_session_timeout",
    "leak_threshold",
    "leak_reclaim",
    "interval",
    "thresholds",
    "behaviour",
    "name",
    "start",
    "deadline",
    "statement_timeout",
    "application_name",
    "pg_stat_statements.track",
    "bogus",
]
_DURATIONS = st.sampled_from(
    [
        "250ms",
        "2s",
        "1m30s",
        "0s",
        "-1s",
        "1e309s",
        "nan",
        "forever",
        "uniform(1s, 2s)",
        "uniform(2s,1s)",
        "exp(10ms)",
        "exp()",
        "",
        "off",
        "timeouts == 0",
        "wait_time_p95_ms < 1",
    ]
)
_SCALARS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    _DURATIONS,
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(_KEYS), children, max_size=4)
    ),
    max_leaves=12,
)
_TABLE = st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=6)
_SCENARIO = st.fixed_dictionaries(
    {},
    optional={
        "clients": _VALUES,
        "duration": _VALUES,
        "iterations": _VALUES,
        "description": _VALUES,
        "preset": st.sampled_from(["conservative", "nope"]) | _VALUES,
        "pool": _TABLE,
        "workload": _TABLE,
        "faults": _TABLE,
        "session": _TABLE,
        "monitor": _TABLE,
        "groups": st.lists(_TABLE, max_size=2) | _VALUES,
        "thresholds": st.lists(_DURATIONS | _SCALARS, max_size=2) | _VALUES,
        "bogus": _VALUES,
    },
)
_DOCUMENT = st.fixed_dictionaries(
    {
        "scenarios": st.dictionaries(
            st.sampled_from(["a", "b-c"]), _SCENARIO, min_size=1, max_size=2
        )
    },
    optional={"presets": st.dictionaries(st.just("conservative"), _TABLE, max_size=1)},
)


def to_toml(document: dict[str, Any]) -> str:
    """TOML for a generated document: every value as an inline value (JSON is close enough
    for strings, numbers, lists; tables become inline tables)."""

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, float):
            if item != item:
                return "nan"
            if item in (float("inf"), float("-inf")):
                return "inf" if item > 0 else "-inf"
            return repr(item)
        if isinstance(item, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(v)}" for k, v in item.items()) + "}"
        if isinstance(item, list):
            return "[" + ", ".join(value(v) for v in item) + "]"
        if isinstance(item, int):
            return str(item)
        return json.dumps(item)

    lines = []
    for table, entries in document.items():
        for name, body in entries.items():
            lines.append(f"[{table}.{json.dumps(name)}]")
            lines.extend(f"{json.dumps(key)} = {value(item)}" for key, item in body.items())
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_DOCUMENT)
def test_generated_documents_load_or_raise_scenario_error(document: dict[str, Any]) -> None:
    text = to_toml(document)
    try:
        loaded = parse_scenarios(text, Path("fuzz.toml"))
        for scenario in loaded.scenarios.values():
            resolve(loaded, scenario, {}, Flags())
    except ScenarioError as error:
        assert str(error).startswith("fuzz.toml") or "scenario" in str(error)
        assert "\n" not in str(error)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_loads_or_raises_scenario_error(text: str) -> None:
    try:
        parse_scenarios(text, Path("fuzz.toml"))
    except ScenarioError as error:
        assert str(error).startswith("fuzz.toml")
