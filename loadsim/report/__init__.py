"""Charts and an HTML page from a recorded run log; runs compared side by side.

The JSON lines a run wrote (`loadsim run --output FILE`) are the only input: this package never
imports the run side (engine, clients, runner, monitor, workload).

    reader     JSONL → events with line numbers; clear errors; a truncated last line tolerated
    series     containers that stay small however long the log (histograms, peaks, samples)
    aggregate  one streaming pass: events → compact per-scenario data
    palette    one colour per kind of event, the same in every chart
    charts     the four charts of a scenario (matplotlib, Agg canvas, no pyplot)
    compare    figures side by side: a text table and two charts
    html       the self-contained index.html
    build      report and compare, end to end
"""

from __future__ import annotations

from loadsim.report.build import Report, build_comparison, build_report

__all__ = ["Report", "build_comparison", "build_report"]
