"""`loadsim report` and `loadsim compare`: logs in, a directory of PNGs and an index.html out.

Reads each log once (streaming), draws each scenario's charts, and, when there are several
scenarios, the comparison; then writes the files. Nothing here prints: the CLI does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loadsim.errors import ScenarioError
from loadsim.report.aggregate import LogData, ScenarioData, read_logs
from loadsim.report.reader import LogSource, Note
from loadsim.report.sizing import is_size_log

if TYPE_CHECKING:  # matplotlib is imported only once the logs have been read
    from loadsim.report.charts import Chart
    from loadsim.report.compare import RunFigures


@dataclass
class Report:
    """What was written, and the charts with the numbers they drew."""

    out_dir: Path
    index: Path
    logs: list[LogData]
    scenarios: list[tuple[ScenarioData, list[Chart]]]
    comparison: list[Chart] = field(default_factory=list)
    runs: list[RunFigures] = field(default_factory=list)
    table: str = ""
    notes: list[str] = field(default_factory=list)
    #: A `loadsim size` log: its sweep's charts (and no scenarios).
    sweep: list[Chart] = field(default_factory=list)

    @property
    def charts(self) -> list[Chart]:
        return (
            [chart for _, charts in self.scenarios for chart in charts]
            + self.comparison
            + (self.sweep)
        )


def default_out_dir(sources: Sequence[str], suffix: str) -> Path:
    if len(sources) == 1 and sources[0] != "-":
        return Path(f"{Path(sources[0]).stem}-{suffix}")
    return Path(f"loadsim-{suffix}")


def scenario_charts(data: ScenarioData, prefix: str) -> list[Chart]:
    from loadsim.report.charts import distribution_chart, latency_chart, pool_chart, timeline_chart
    from loadsim.report.memory_chart import memory_chart

    charts = [
        timeline_chart(data, prefix),
        pool_chart(data, prefix),
        distribution_chart(data, prefix),
        latency_chart(data, prefix),
    ]
    memory = memory_chart(data, prefix)  # only when the log has the figures
    return charts if memory is None else [*charts, memory]


def build_report(
    sources: Sequence[str | Path], out_dir: Path | None = None, note: Note | None = None
) -> Report:
    """Charts for every scenario of every log, a comparison when there are several, and the
    page that shows them all."""
    names = [str(source) for source in sources]
    if len(names) == 1 and is_size_log(LogSource.of(names[0])):
        return _size_report(names[0], out_dir, note)
    logs, scenarios, notes = _read(names, note)
    from loadsim.report.charts import slug
    from loadsim.report.compare import (
        comparison_chart,
        comparison_over_time_chart,
        figures,
        labels_for,
        table,
    )
    from loadsim.report.html import page

    labels = labels_for(scenarios)
    for data, label in zip(scenarios, labels, strict=True):
        data.display = label
    drawn = [
        (data, scenario_charts(data, f"{slug(label)}-"))
        for data, label in zip(scenarios, labels, strict=True)
    ]
    runs: list[RunFigures] = []
    comparison: list[Chart] = []
    if len(scenarios) > 1:
        runs = figures(scenarios)
        comparison = [comparison_chart(runs), comparison_over_time_chart(runs)]
    out = out_dir if out_dir is not None else default_out_dir(names, "report")
    title = "loadsim report: " + ", ".join(labels)
    text = page(
        title=title,
        sources=[log.source.label for log in logs],
        notes=notes,
        runs=runs,
        comparison=comparison,
        scenarios=drawn,
    )
    report = Report(out, out / "index.html", logs, drawn, comparison, runs, notes=notes)
    if runs:
        report.table = table(runs)
    _write(out, report.charts, text)
    return report


def build_comparison(
    sources: Sequence[str | Path], out_dir: Path | None = None, note: Note | None = None
) -> Report:
    """The runs (scenarios) of the logs side by side: a table, two charts and a page."""
    names = [str(source) for source in sources]
    logs, scenarios, notes = _read(names, note)
    from loadsim.report.compare import (
        comparison_chart,
        comparison_over_time_chart,
        figures,
        table,
    )
    from loadsim.report.html import page

    runs = figures(scenarios)
    comparison = [comparison_chart(runs), comparison_over_time_chart(runs)]
    out = out_dir if out_dir is not None else default_out_dir(names, "compare")
    text = page(
        title="loadsim comparison: " + " vs ".join(run.label for run in runs),
        sources=[log.source.label for log in logs],
        notes=notes,
        runs=runs,
        comparison=comparison,
        scenarios=[],
    )
    report = Report(out, out / "index.html", logs, [], comparison, runs, table(runs), notes)
    _write(out, comparison, text)
    return report


def _size_report(name: str, out_dir: Path | None, note: Note | None) -> Report:
    """A `loadsim size` log: the sweep's curves and its recommendation."""
    from loadsim.report.sizing import build_size_report

    out = out_dir if out_dir is not None else default_out_dir([name], "report")
    notes: list[str] = []

    def noted(message: str) -> None:
        notes.append(message)
        if note is not None:
            note(message)

    _, charts, text = build_size_report(LogSource.of(name), out, noted)
    report = Report(out, out / "index.html", [], [], notes=notes, sweep=charts)
    _write(out, charts, text)
    return report


def _read(
    names: Sequence[str], note: Note | None
) -> tuple[list[LogData], list[ScenarioData], list[str]]:
    if not names:
        raise ScenarioError("give at least one run log (a file written by 'loadsim run --output')")
    logs = read_logs([LogSource.of(name) for name in names], note)
    scenarios = [data for log in logs for data in log.scenarios]
    notes = [message for log in logs for message in log.notes]
    return logs, scenarios, notes


def _write(out: Path, charts: Sequence[Chart], text: str) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        for chart in charts:
            (out / chart.name).write_bytes(chart.png)
        (out / "index.html").write_text(text, encoding="utf-8")
    except OSError as error:
        raise ScenarioError(f"--out {out}: cannot write: {error.strerror or error}") from None
