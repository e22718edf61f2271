"""The report page: one self-contained `index.html` that opens offline, anywhere.

The charts are embedded as base64 `data:` URIs, styles are inline, and nothing is fetched from
the network. Every piece of text from a log is escaped with `html.escape`. A small inline
script marks each image `data-loaded="true"` or `"false"` once the page has loaded, so that a
headless browser (and a test) can tell that every chart displayed.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from loadsim.report.aggregate import ScenarioData
from loadsim.report.charts import Chart, slug
from loadsim.report.compare import ROWS, RunFigures, figures, verdicts

_STYLE = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       margin: 0; color: #1d1d1f; background: #f6f7f9; }
main { max-width: 1360px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 40px 0 6px; padding-top: 12px; border-top: 2px solid #d0d4da; }
h3 { font-size: 16px; margin: 26px 0 8px; }
.meta { color: #555; margin: 2px 0 12px; }
.notes { background: #fff7e0; border-left: 4px solid #f0b400; padding: 8px 14px; margin: 14px 0; }
.notes li { margin: 2px 0; }
figure { background: #fff; margin: 16px 0; padding: 12px; border-radius: 6px;
         box-shadow: 0 1px 3px rgba(0,0,0,.12); }
figure img { display: block; width: 100%; height: auto; }
figcaption { color: #444; font-size: 14px; margin-top: 8px; }
table { border-collapse: collapse; background: #fff; margin: 8px 0 16px; font-size: 14px; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e3e6ea; text-align: left;
         vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #eef1f4; }
.grid { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
pre { background: #fff; padding: 10px; overflow-x: auto; font-size: 13px; }
nav a { margin-right: 14px; }
.verdict { font-weight: 600; }
table.figures th { font-weight: 600; font-size: 13px; }
table.figures td { font-size: 17px; }
details { margin: 12px 0; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.querySelectorAll("img");
  for (var i = 0; i < images.length; i++) {
    var img = images[i];
    img.setAttribute("data-loaded", img.complete && img.naturalWidth > 0 ? "true" : "false");
  }
  document.body.setAttribute("data-images-checked", String(images.length));
});
"""


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def image(chart: Chart) -> str:
    encoded = base64.b64encode(chart.png).decode("ascii")
    return (
        f'<figure id="{e(chart.name)}">'
        f'<img src="data:image/png;base64,{encoded}" alt="{e(chart.title)}" '
        f'data-file="{e(chart.name)}" data-loaded="pending">'
        f"<figcaption><strong>{e(chart.title)}.</strong> {e(chart.caption)}</figcaption>"
        "</figure>"
    )


def page(
    *,
    title: str,
    sources: Sequence[str],
    notes: Sequence[str],
    runs: Sequence[RunFigures],
    comparison: Sequence[Chart],
    scenarios: Sequence[tuple[ScenarioData, Sequence[Chart]]],
) -> str:
    """The whole page. `runs` and `comparison` are shown when there are several runs."""
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>",
        f"<style>{_STYLE}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head><body><main>",
        f"<h1>{e(title)}</h1>",
        f'<p class="meta">From {e(", ".join(sources))} · generated {e(generated)} by loadsim</p>',
    ]
    if len(scenarios) > 1:
        parts.append(
            "<nav>"
            + ("<a href='#comparison'>comparison</a>" if runs else "")
            + "".join(
                f"<a href='#{e(_anchor(data, i))}'>{e(data.label)}</a>"
                for i, (data, _) in enumerate(scenarios)
            )
            + "</nav>"
        )
    if notes:
        parts.append(
            '<div class="notes"><strong>Notes on the log</strong><ul>'
            + "".join(f"<li>{e(note)}</li>" for note in notes)
            + "</ul></div>"
        )
    if runs:
        parts.append('<h2 id="comparison">Comparison</h2>')
        parts.append(comparison_table(runs))
        parts.extend(f'<p class="verdict">{e(line)}</p>' for line in verdicts(runs) if line)
        parts.extend(image(chart) for chart in comparison)
    for index, (data, charts) in enumerate(scenarios):
        parts.append(scenario_section(data, charts, _anchor(data, index)))
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _anchor(data: ScenarioData, index: int) -> str:
    return f"scenario-{index + 1}-{slug(data.scenario)}"


def comparison_table(runs: Sequence[RunFigures]) -> str:
    head = "<tr><th></th>" + "".join(f"<th>{e(run.label)}</th>" for run in runs) + "</tr>"
    body = []
    for key, label, fmt in ROWS:
        cells = []
        for run in runs:
            value = run.values.get(key, math.nan)
            cells.append(
                f'<td class="num">{e("-" if math.isnan(value) else fmt.format(value))}</td>'
            )
        body.append(f"<tr><th>{e(label)}</th>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def scenario_section(data: ScenarioData, charts: Sequence[Chart], anchor: str) -> str:
    start = data.start
    facts = [
        f"run {start.get('run_id')}",
        f"from {data.source} (line {data.first_line})",
        f"server {start.get('server_version', '?')} ({start.get('database', '?')})",
        f"loadsim {start.get('loadsim_version', '?')}",
        f"SQLAlchemy {start.get('sqlalchemy_version', '?')}",
        f"Python {start.get('python_version', '?')}",
        f"started {start.get('ts', '?')}",
    ]
    parts = [
        f'<h2 id="{e(anchor)}">{e(data.label)}</h2>',
        f"<p>{e(start.get('description') or '')}</p>",
        f'<p class="meta">{e(" · ".join(facts))}</p>',
    ]
    if data.warnings:
        parts.append(
            '<div class="notes"><strong>Warnings during the run</strong><ul>'
            + "".join(f"<li>{e(w)}</li>" for w in data.warnings)
            + "</ul></div>"
        )
    parts.append(key_figures(data))
    parts.extend(image(chart) for chart in charts)
    parts.append('<div class="grid">')
    parts.append("<div><h3>Summary (run.end)</h3>" + summary_table(data) + "</div>")
    parts.append("<div><h3>Configuration (run.start)</h3>" + configuration(data) + "</div>")
    parts.append("</div>")
    if data.thresholds:
        parts.append("<h3>Thresholds</h3>" + thresholds_table(data.thresholds))
    other = {
        key: value
        for key, value in data.config.items()
        if key not in {"pool", "workload", "sources", "description", "thresholds"}
    }
    parts.append(
        "<details><summary>The whole run.start configuration (JSON)</summary>"
        f"<pre>{e(json.dumps(other, indent=2, default=str))}</pre></details>"
    )
    return "\n".join(parts)


_KEY_FIGURES = (
    "checkouts_per_s",
    "checkouts",
    "wait_p50",
    "wait_p95",
    "wait_p99",
    "use_p50",
    "connects",
    "max_open",
    "timeouts",
    "errors",
)


def key_figures(data: ScenarioData) -> str:
    """The figures that matter at a glance, in one row (as in `loadsim compare`)."""
    values = figures([data])[0].values
    rows = [row for row in ROWS if row[0] in _KEY_FIGURES]
    head = "".join(f"<th>{e(label)}</th>" for _, label, _ in rows)
    cells = "".join(
        f'<td class="num">{e("-" if math.isnan(values[key]) else fmt.format(values[key]))}</td>'
        for key, _, fmt in rows
    )
    return f'<table class="figures"><tr>{head}</tr><tr>{cells}</tr></table>'


def summary_table(data: ScenarioData) -> str:
    summary = data.summary
    if summary is None:
        return (
            "<p>No run.end in the log: the run was interrupted. "
            f"{e(f'{data.checkouts:,}')} checkouts were recorded before it stopped.</p>"
        )
    rows = "".join(
        f"<tr><th>{e(key)}</th><td>{e(_value(value))}</td></tr>" for key, value in summary.items()
    )
    return f"<table>{rows}</table>"


def configuration(data: ScenarioData) -> str:
    sources = data.start.get("sources")
    sources = sources if isinstance(sources, dict) else {}
    rows = []
    for section in ("pool", "workload"):
        values = data.start.get(section)
        if not isinstance(values, dict):
            continue
        rows.append(f"<tr><th colspan='3'>{e(section)}</th></tr>")
        for key, value in values.items():
            source = sources.get(key) or sources.get(key.removesuffix("_s")) or ""
            rows.append(
                f"<tr><td>{e(key)}</td><td>{e(_value(value))}</td><td>{e(source)}</td></tr>"
            )
    if not rows:
        return "<p>No pool or workload configuration in run.start.</p>"
    return (
        "<table><tr><th>setting</th><th>value</th><th>from</th></tr>" + "".join(rows) + "</table>"
    )


def thresholds_table(results: Iterable[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{e(r.get('threshold'))}</td><td>{e(_value(r.get('value')))}</td>"
        f"<td>{'passed' if r.get('passed') else 'FAILED'}</td></tr>"
        for r in results
    )
    return f"<table><tr><th>threshold</th><th>value</th><th>result</th></tr>{rows}</table>"


def _value(value: Any) -> str:
    if isinstance(value, dict):
        if not value:
            return "-"
        return ", ".join(f"{key} {_value(inner)}" for key, inner in value.items())
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value) if value else "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)
