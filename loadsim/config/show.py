"""`loadsim show`: a scenario's resolved configuration, as text for people."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from loadsim.config.scenario import format_duration
from loadsim.config.settings import RunConfig
from loadsim.config.urls import mask_url_text


def _describe_faults(config: RunConfig) -> str | None:
    faults = config.faults
    parts = [f"restart at {format_duration(at)}" for at in faults.restart]
    parts += [
        f"terminate {faults.terminate_which} at {format_duration(at)}" for at in faults.terminate
    ]
    parts += [f"{name} {value}ms" for name, value in faults.session_settings().items()]
    return ", ".join(parts) or None


def format_show(config: RunConfig) -> str:
    """`loadsim show`: every resolved setting, its value, and where the value came from."""
    values: dict[str, Any] = {
        "scenario": config.scenario,
        "description": config.description,
        "database_url": (
            mask_url_text(config.database_url) if config.database_url else "(embedded PostgreSQL)"
        ),
        **asdict(config.pool),
        **{key: value for key, value in asdict(config.workload).items()},
        "hold": str(config.workload.hold),
        "think": str(config.workload.think),
        "instances": config.instances,
        "seed": config.seed,
        "log_level": config.log_level,
        "thresholds": ", ".join(threshold.expression for threshold in config.thresholds) or None,
        "groups": ", ".join(
            f"{group.name} ({group.clients} {group.behaviour})" for group in config.groups
        )
        or None,
        "arrivals": (
            f"{config.arrivals.rate:g}/s {config.arrivals.distribution}, "
            f"{len(config.arrivals.stages)} stages, max_in_flight {config.arrivals.max_in_flight}"
            if config.arrivals is not None
            else None
        ),
        "faults": _describe_faults(config),
    }
    for key in ("pool_timeout", "pool_recycle", "duration", "ramp_up"):
        value = values.get(key)
        if isinstance(value, float) and value >= 0:
            values[key] = format_duration(value)
    if config.pool.pool_recycle < 0:
        values["pool_recycle"] = "off (-1)"
    width = max(len(key) for key in values)
    lines = []
    for key, value in values.items():
        source = config.sources.get(key)
        shown = "-" if value is None else str(value)
        lines.append(f"{key:<{width}}  {shown}" + (f"  ({source})" if source else ""))
    return "\n".join(lines)
