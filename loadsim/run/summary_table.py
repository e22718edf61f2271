"""Text for people: the end-of-run summary table, one column per scenario."""

from __future__ import annotations

from typing import Any

_ROWS: tuple[tuple[str, str], ...] = (
    ("elapsed s (measured window)", "elapsed_s"),
    ("grace s (holders finishing)", "grace_s"),
    ("clients", "clients"),
    ("checkouts", "checkouts"),
    ("checkouts/s", "checkouts_per_s"),
    ("connects", "connects"),
    ("checkouts per connect", "reuse_ratio"),
    ("max open connections", "max_open"),
    ("max waiting clients", "max_pending_requests"),
    ("queue jumps (share of checkouts)", "queue_jumps"),
    ("utilisation (mean / max)", "utilisation"),
    ("wait ms (p50 / p99 / max)", "wait_time_ms"),
    ("acquired wait ms (p50 / p99 / max)", "acquired_wait_time_ms"),
    ("use ms (p50 / p99 / max)", "use_time_ms"),
    ("connect ms (p50 / p99 / max)", "create_time_ms"),
    ("timeouts", "timeouts"),
    ("errors", "errors"),
    ("leaks suspected", "leaks_suspected"),
    ("server memory MiB (peak / per conn)", "server_memory"),
    ("loadsim memory MiB (peak)", "client_memory_peak_mb"),
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
    if key == "queue_jumps":  # granted while an earlier waiter still waited
        jumps, share = summary.get("queue_jumps"), summary.get("queue_jump_share")
        return "-" if jumps is None else f"{jumps:,} ({share or 0:.0%})"
    if key == "utilisation":
        mean, peak = summary.get("utilisation_mean"), summary.get("utilisation_max")
        return "-" if mean is None else f"{mean:.0%} / {peak:.0%}"
    if key == "server_memory":
        peak, each = (
            summary.get("server_memory_peak_mb"),
            summary.get("server_memory_per_connection_mb"),
        )
        return "-" if peak is None else f"{peak:,.1f} / {'-' if each is None else f'{each:,.2f}'}"
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
