"""`loadsim show`: a scenario's resolved configuration, as text for people.

Every value `RunConfig` holds is printed, with where it came from: the pool's and the main
workload's settings and the run's own (`sources`), then the monitor, the faults, the server
settings of our sessions (`session.statement_timeout`), an open workload's arrivals and every
client group, key by key (`monitor.leak_threshold`, `groups.forgetful.hold`). Those last can
only come from the scenario or the built-in defaults: a value equal to the default says
`default`, any other `scenario`; a session setting says `scenario` (its `[session]` table) or
the `[faults]` key it comes from.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from loadsim.config.scenario import (
    ClientGroup,
    Distribution,
    Faults,
    MonitorSettings,
    format_duration,
)
from loadsim.config.settings import DEFAULT, RunConfig
from loadsim.config.urls import mask_url_text

_SCENARIO = "scenario"
#: Settings in seconds, shown as durations (a negative pool_recycle is "off").
_DURATIONS = frozenset(
    {
        "pool_timeout",
        "pool_recycle",
        "duration",
        "ramp_up",
        "start",
        "interval",
        "leak_threshold",
        "leak_reclaim",
        "restart",
        "terminate",
        "idle_session_timeout",
        "idle_in_transaction_session_timeout",
        "deadline",
    }
)


def _duration(seconds: float) -> str:
    return "forever" if math.isinf(seconds) else format_duration(seconds)


def _shown(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Distribution):
        return "forever" if value.kind == "fixed" and math.isinf(value.a) else str(value)
    if key == "pool_recycle" and isinstance(value, float) and value < 0:
        return "off (-1)"
    if key in _DURATIONS and isinstance(value, tuple):
        return ", ".join(_duration(item) for item in value) or "-"
    if key in _DURATIONS and isinstance(value, int | float) and not isinstance(value, bool):
        return _duration(float(value))
    return str(value)


Row = tuple[str, str, str | None]  # key, value as shown, source


def _dataclass_rows(prefix: str, value: Any, default: Any | None) -> list[Row]:
    """One row per field of a dataclass; its source from a comparison with the default
    (None: every value is the scenario's own)."""
    rows: list[Row] = []
    for spec in fields(value):
        item = getattr(value, spec.name)
        if default is None:
            source = _SCENARIO
        else:
            source = DEFAULT if item == getattr(default, spec.name) else _SCENARIO
        rows.append((f"{prefix}{spec.name}", _shown(spec.name, item), source))
    return rows


def _arrivals_rows(config: RunConfig) -> list[Row]:
    """An open workload's arrivals. `--rate` sets the rate (and drops the stages), or makes
    a closed scenario open with the default distribution and max_in_flight; a ramp-up is the
    first stage, from 0 to the rate (settings.py records those sources)."""
    arrivals, sources = config.arrivals, config.sources
    if arrivals is None:
        return [("arrivals", "- (closed workload)", DEFAULT)]
    rows: list[Row] = []
    for spec in fields(arrivals):
        if spec.name != "stages":
            key = f"arrivals.{spec.name}"
            shown = _shown(spec.name, getattr(arrivals, spec.name))
            rows.append((key, shown, sources.get(key, _SCENARIO)))
    if not arrivals.stages:
        dropped = sources.get("arrivals.rate") == "flag"  # --rate: a constant rate
        rows.append(("arrivals.stages", "- (a constant rate)", "flag" if dropped else DEFAULT))
    for index, stage in enumerate(arrivals.stages):
        key = f"arrivals.stages[{index}]"
        shown = f"duration {_duration(stage.duration)}, target {stage.target:g}/s"
        rows.append((key, shown, sources.get(key, _SCENARIO)))
    return rows


def _group_rows(groups: tuple[ClientGroup, ...]) -> list[Row]:
    if not groups:
        return [("groups", "-", DEFAULT)]
    rows: list[Row] = []
    for group in groups:
        default = ClientGroup(name=group.name)
        rows.extend(
            (key, shown, _SCENARIO if key.endswith(".name") else source)
            for key, shown, source in _dataclass_rows(f"groups.{group.name}.", group, default)
        )
    return rows


def _session_rows(config: RunConfig) -> list[Row]:
    """The server settings our sessions get, as they are sent (PostgreSQL's own units), each
    from the `[session]` table or from a `[faults]` idle timeout."""
    settings = config.session_settings
    if not settings:
        return [("session", "- (the server's own settings)", DEFAULT)]
    return [
        (
            f"session.{name}",
            value,
            _SCENARIO if name in config.session else f"faults.{name}, in ms",
        )
        for name, value in settings.items()
    ]


def show_rows(config: RunConfig) -> list[Row]:
    """Every resolved value: its key, how it is shown, and where it came from."""
    sources = config.sources
    rows: list[Row] = [
        ("scenario", config.scenario, None),
        ("description", config.description, None),
        (
            "database_url",
            mask_url_text(config.database_url) if config.database_url else "(embedded PostgreSQL)",
            sources.get("database_url"),
        ),
    ]
    for owner in (config.pool, config.workload):
        rows.extend(
            (spec.name, _shown(spec.name, getattr(owner, spec.name)), sources.get(spec.name))
            for spec in fields(owner)
        )
    rows += [
        ("instances", _shown("instances", config.instances), sources.get("instances")),
        ("seed", _shown("seed", config.seed), sources.get("seed")),
        ("log_level", config.log_level, sources.get("log_level")),
        ("metrics_port", _shown("metrics_port", config.metrics_port), sources.get("metrics_port")),
        (
            "otlp_endpoint",
            _shown("otlp_endpoint", config.otlp_endpoint),
            sources.get("otlp_endpoint"),
        ),
        (
            "thresholds",
            ", ".join(threshold.expression for threshold in config.thresholds) or "-",
            None,  # the scenario's, and any --threshold's
        ),
    ]
    rows += _dataclass_rows("monitor.", config.monitor, MonitorSettings())
    rows += _dataclass_rows("faults.", config.faults, Faults())
    rows += _session_rows(config)
    rows += _arrivals_rows(config)
    rows += _group_rows(config.groups)
    return rows


def format_show(config: RunConfig) -> str:
    """`loadsim show`: every resolved setting, its value, and where the value came from."""
    rows = show_rows(config)
    width = max(len(key) for key, _, _ in rows)
    return "\n".join(
        f"{key:<{width}}  {shown}" + (f"  ({source})" if source else "")
        for key, shown, source in rows
    )
