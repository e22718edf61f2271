"""Text for people: the end-of-run summary table and `loadsim show`'s resolved configuration."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from loadsim.engine import mask_url_text
from loadsim.scenario import format_duration
from loadsim.settings import RunConfig

_ROWS: tuple[tuple[str, str], ...] = (
    ("elapsed", "elapsed_s"),
    ("clients", "clients"),
    ("checkouts", "checkouts"),
    ("checkouts/s", "checkouts_per_s"),
    ("connects", "connects"),
    ("checkouts per connect", "reuse_ratio"),
    ("max open connections", "max_open"),
    ("max waiting clients", "max_pending_requests"),
    ("utilisation (mean / max)", "utilisation"),
    ("wait ms (p50 / p99 / max)", "wait_time_ms"),
    ("use ms (p50 / p99 / max)", "use_time_ms"),
    ("connect ms (p50 / p99 / max)", "create_time_ms"),
    ("timeouts", "timeouts"),
    ("errors", "errors"),
    ("leaks suspected", "leaks_suspected"),
    ("interrupted", "interrupted"),
)


def format_summary(summaries: list[dict[str, Any]]) -> str:
    """One column per scenario, one row per figure."""
    header = ["", *(summary["scenario"] for summary in summaries)]
    rows = [header]
    for label, key in _ROWS:
        rows.append([label, *(_cell(_value(summary, key)) for summary in summaries)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines: list[str] = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )
        for row in rows
    ]
    lines.extend(_comparisons(summaries))
    return "\n".join(lines)


def _comparisons(summaries: list[dict[str, Any]]) -> list[str]:
    """With several scenarios, how each compares with the first in throughput."""
    if len(summaries) < 2:
        return []
    first = summaries[0]
    lines = [""]
    for other in summaries[1:]:
        if other["checkouts_per_s"] > 0:
            ratio = first["checkouts_per_s"] / other["checkouts_per_s"]
            lines.append(
                f"{first['scenario']} made {ratio:.2f}x the checkouts/s of {other['scenario']}"
            )
    return lines


def _value(summary: dict[str, Any], key: str) -> Any:
    if key == "utilisation":
        mean, peak = summary.get("utilisation_mean"), summary.get("utilisation_max")
        return "-" if mean is None else f"{mean:.0%} / {peak:.0%}"
    return summary.get(key)


def _cell(value: Any) -> str:
    if isinstance(value, dict) and "p50" in value:
        return f"{value['p50']:.1f} / {value['p99']:.1f} / {value['max']:.1f}"
    if isinstance(value, dict) and "count" in value:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


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
