"""`loadsim report` and `loadsim compare`, on runs recorded here against the test server.

The logs are real: the scenarios are run for a few seconds at the start of the module. The
charts are checked by the numbers they drew (lanes, bars, extents, counts), compared with the
events of the log; the page is opened in headless Chromium, which must show every image.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loadsim.report import Report, build_report
from loadsim.report import aggregate as aggregate_module
from loadsim.report.reader import LogSource
from tests.helpers import clean_environment

Event = dict[str, Any]
CHROMIUM_NAMES = ("chromium", "chromium-browser")


@dataclass
class Recorded:
    directory: Path
    saturation: Path  # saturation then exhaustion, 2 s each
    pooled: Path  # pooled then unpooled, 2 s each
    instances: Path  # saturation in two application instances, 2 s


def loadsim_cli(
    *arguments: str, cwd: Path, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [sys.executable, "-m", "loadsim", *arguments],
        capture_output=True,
        env=clean_environment(),
        cwd=cwd,
        timeout=timeout,
        input=stdin if stdin is not None else b"",
    )
    return subprocess.CompletedProcess(
        completed.args,
        completed.returncode,
        completed.stdout.decode("utf-8", "replace"),
        completed.stderr.decode("utf-8", "replace"),
    )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Recorded:
    directory = tmp_path_factory.mktemp("recorded")
    runs = {
        "saturation.jsonl": ("saturation", "exhaustion", "--duration", "2s"),
        "pooled.jsonl": ("pooled", "unpooled", "--duration", "2s"),
        "instances.jsonl": ("saturation", "--instances", "2", "--duration", "2s"),
    }
    for name, arguments in runs.items():
        result = loadsim_cli(
            "run",
            *arguments,
            "--database-url",
            database_url,
            "--output",
            name,
            "-q",
            cwd=directory,
        )
        assert result.returncode == 0, result.stderr
    return Recorded(*(directory / name for name in ("", *runs)))


@pytest.fixture(scope="module")
def saturation_report(recorded: Recorded) -> Report:
    return build_report([recorded.saturation], recorded.directory / "saturation-report")


@pytest.fixture(scope="module")
def pooled_report(recorded: Recorded) -> Report:
    return build_report([recorded.pooled], recorded.directory / "pooled-report")


def events_of(path: Path) -> dict[str, list[Event]]:
    by_scenario: dict[str, list[Event]] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            event = json.loads(line)
            by_scenario.setdefault(event["scenario"], []).append(event)
    return by_scenario


def charts_of(report: Report, scenario: str) -> dict[str, dict[str, Any]]:
    """The data of each chart of a scenario, by kind (timeline, pool, distribution, latency)."""
    for data, charts in report.scenarios:
        if data.scenario == scenario:
            return {
                chart.name.rsplit("-", 1)[1].removesuffix(".png"): chart.data for chart in charts
            }
    raise AssertionError(f"no scenario {scenario} in the report")


def run_end_t(events: list[Event]) -> float:
    return float(events[-1]["t"])


# --------------------------------------------------------------------------- the charts


@pytest.mark.parametrize("scenario", ["saturation", "exhaustion", "pooled", "unpooled"])
def test_timeline_has_a_lane_per_connection_and_a_bar_per_checkout(
    recorded: Recorded, saturation_report: Report, pooled_report: Report, scenario: str
) -> None:
    path, report = (
        (recorded.saturation, saturation_report)
        if scenario in ("saturation", "exhaustion")
        else (recorded.pooled, pooled_report)
    )
    events = events_of(path)[scenario]
    timeline = charts_of(report, scenario)["timeline"]
    connected = list(dict.fromkeys(e["conn"] for e in events if e["event"] == "pool.connect"))
    checkouts = sum(e["event"] == "pool.checkout" for e in events)
    assert timeline["lanes"] == connected
    assert timeline["bars"] == checkouts == timeline["checkouts"]
    assert not timeline["bars_thinned"]
    start, end = timeline["extent"]
    assert 0 <= start <= end <= run_end_t(events)
    assert timeline["xlim"][1] >= end
    closes = Counter(e["cause"] for e in events if e["event"] == "pool.close")
    if not timeline["packed"]:
        assert timeline["marks"]["connect"] == len(connected)
        for cause, number in closes.items():
            assert timeline["marks"][f"close:{cause}"] == number
    clients = {e["client"] for e in events if e["event"] == "pool.checkout"}
    assert set(timeline["clients"]) == clients


def test_unpooled_connections_share_rows_when_they_never_overlap(pooled_report: Report) -> None:
    timeline = charts_of(pooled_report, "unpooled")["timeline"]
    assert timeline["packed"]  # one connection per checkout: too many for a lane each
    assert timeline["rows"] < len(timeline["lanes"])
    assert timeline["rows"] <= 20 + 1  # never more rows than connections open at once
    assert charts_of(pooled_report, "pooled")["timeline"]["rows"] == 10


def test_pool_chart_shows_the_counts_the_events_carry(
    recorded: Recorded, saturation_report: Report
) -> None:
    logs = events_of(recorded.saturation)
    for scenario, limit in (("saturation", 7), ("exhaustion", 10)):
        events = logs[scenario]
        # the pool's own counts are meaningless while it is disposed (see aggregate.py)
        pool_events = [
            e for e in events if e["event"].startswith("pool.") and e.get("cause") != "disposed"
        ]
        chart = charts_of(saturation_report, scenario)["pool"]
        assert chart["max_used"] == max(e["connections_used"] for e in pool_events)
        assert chart["max_total"] == max(e["connections_total"] for e in pool_events)
        assert chart["max_pending"] == max(e["pending_requests"] for e in pool_events)
        assert chart["max_overflow"] == max(e["overflow"] for e in pool_events)
        assert chart["pool_size"] == events[0]["pool"]["pool_size"]
        assert chart["limit"] == limit
        assert chart["max_total"] <= limit
        assert chart["monitor_snapshots"] == sum(e["event"] == "monitor.stats" for e in events)
        assert chart["timeouts"] == sum(e["event"] == "client.timeout" for e in events)
        assert 0 <= chart["extent"][0] <= chart["extent"][1] <= chart["xlim"][1]
        assert chart["xlim"][1] >= max(e["t"] for e in pool_events)
    exhaustion = charts_of(saturation_report, "exhaustion")["pool"]
    assert exhaustion["max_used"] == 10  # the pool at its limit
    assert exhaustion["timeouts"] > 0


def test_distribution_counts_every_checkout_once(
    recorded: Recorded, saturation_report: Report
) -> None:
    events = events_of(recorded.saturation)["saturation"]
    chart = charts_of(saturation_report, "saturation")["distribution"]
    checkouts = [e for e in events if e["event"] == "pool.checkout"]
    assert chart["checkouts_per_client"] == dict(Counter(e["client"] for e in checkouts))
    assert chart["checkouts_per_connection"] == dict(Counter(e["conn"] for e in checkouts))
    assert len(chart["checkouts_per_client"]) == events[0]["workload"]["clients"]
    waits: dict[int, list[float]] = {}
    for event in events:
        if event["event"] == "client.acquired":
            waits.setdefault(event["client"], []).append(event["wait_ms"])
    for client, values in waits.items():
        assert chart["wait_mean_ms_per_client"][client] == pytest.approx(sum(values) / len(values))


def test_latency_chart_covers_every_sample_and_snapshot(
    recorded: Recorded, saturation_report: Report
) -> None:
    events = events_of(recorded.saturation)["saturation"]
    chart = charts_of(saturation_report, "saturation")["latency"]
    assert chart["samples"]["wait_time_ms"] == sum(e["event"] == "client.acquired" for e in events)
    assert chart["samples"]["use_time_ms"] == sum(e["event"] == "client.released" for e in events)
    assert chart["samples"]["create_time_ms"] == sum(e["event"] == "pool.connect" for e in events)
    snapshots = [e for e in events if e["event"] == "monitor.stats"]
    assert chart["monitor_snapshots"] == len(snapshots) >= 2
    assert chart["extent"] == (snapshots[0]["t"], snapshots[-1]["t"])
    assert chart["points_over_time"]["wait"] > 0


def test_several_scenarios_in_a_log_are_compared(saturation_report: Report) -> None:
    names = [chart.name for chart in saturation_report.comparison]
    assert names == ["comparison.png", "comparison-over-time.png"]
    assert saturation_report.comparison[0].data["labels"] == ["saturation", "exhaustion"]
    figures = saturation_report.comparison[0].data["figures"]
    assert figures["exhaustion"]["timeouts"] > 0 == figures["saturation"]["timeouts"]


def test_past_the_cap_checkouts_close_together_merge(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loadsim.report.charts import timeline_chart

    monkeypatch.setattr(aggregate_module, "MAX_BARS", 200)
    data = aggregate_module.read_log(LogSource.of(recorded.pooled)).scenarios[0]
    assert data.scenario == "pooled"
    bars = data.bars
    assert bars.merged and not bars.thinned and len(bars) <= 200
    starts, ends, lanes, _, counts = bars.arrays()
    assert int(counts.sum()) == data.checkouts > 1000  # every checkout is in one bar
    lane_of = {int(conn): lane for lane, conn in enumerate(data.lanes.conn)}
    for event in events_of(recorded.pooled)["pooled"]:
        if event["event"] == "pool.checkout":  # ... the bar of its connection, at its time
            on_lane = lanes == lane_of[event["conn"]]
            assert ((starts[on_lane] <= event["t"]) & (event["t"] <= ends[on_lane])).any()
    timeline = timeline_chart(data, "")
    assert timeline.data["bars_merged"] and timeline.data["checkouts_drawn"] == data.checkouts


def test_past_the_cap_one_checkout_per_connection_is_thinned_evenly(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loadsim.report.charts import timeline_chart

    monkeypatch.setattr(aggregate_module, "MAX_BARS", 100)
    data = aggregate_module.read_log(LogSource.of(recorded.pooled)).scenarios[1]
    assert data.scenario == "unpooled"
    assert data.bars.thinned and 50 <= len(data.bars) <= 100  # NullPool: nothing to merge
    starts = data.bars.arrays()[0]
    assert starts.min() < data.last_t / 4 and starts.max() > data.last_t * 3 / 4  # all along
    timeline = timeline_chart(data, "")
    assert timeline.data["bars_thinned"] and timeline.data["bars"] <= len(data.bars)
    assert timeline.data["checkouts"] == data.bars.seen > 100


def test_application_instances_are_one_fleet(recorded: Recorded, tmp_path: Path) -> None:
    events = events_of(recorded.instances)["saturation"]
    report = build_report([recorded.instances], tmp_path / "fleet")
    assert len(report.scenarios) == 1
    data, _ = report.scenarios[0]
    assert data.instances == [0, 1] and data.summary is not None
    assert data.summary["instances"] == 2  # run.summary: the fleet's figures
    charts = charts_of(report, "saturation")
    connections = [(e["instance"], e["conn"]) for e in events if e["event"] == "pool.connect"]
    assert len(charts["timeline"]["lanes"]) == len(set(connections)) > 7
    assert charts["timeline"]["bars"] == sum(e["event"] == "pool.checkout" for e in events)
    assert charts["pool"]["instances"] == 2
    assert charts["pool"]["max_total"] <= 2 * 7 < charts["pool"]["max_total"] + 7
    clients = charts["distribution"]["checkouts_per_client"]
    assert len(clients) == 20 and {str(k).split("/")[0] for k in clients} == {"0", "1"}


# ------------------------------------------------------------------------------ the page


def test_page_embeds_every_chart_the_summary_and_the_configuration(
    saturation_report: Report,
) -> None:
    page = saturation_report.index.read_text(encoding="utf-8")
    files = sorted(saturation_report.out_dir.glob("*.png"))
    assert len(files) == len(saturation_report.charts) == 2 * 4 + 2
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(files)
    for path in files:
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        assert f'src="data:image/png;base64,{encoded}"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from the network
    for data, _ in saturation_report.scenarios:
        assert data.summary is not None
        assert f"<th>checkouts</th><td>{data.summary['checkouts']:,}</td>" in page
        assert f"<td>pool_size</td><td>{data.pool_config['pool_size']}</td>" in page


def first_lines(path: Path, count: int) -> list[str]:
    """The start of a log: a run cut short (no run.end), quick to draw."""
    return path.read_text(encoding="utf-8").splitlines(keepends=True)[:count]


def test_page_escapes_text_from_the_log(recorded: Recorded, tmp_path: Path) -> None:
    lines = first_lines(recorded.saturation, 300)
    start = json.loads(lines[0])
    start["description"] = "<script>alert('x')</script> & <b>more</b>"
    lines[0] = json.dumps(start) + "\n"
    log = tmp_path / "edited.jsonl"
    log.write_text("".join(lines), encoding="utf-8")
    page = build_report([log], tmp_path / "out").index.read_text(encoding="utf-8")
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;more&lt;/b&gt;" in page


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "headless Chromium is needed to check the report page and was not found: install "
        "Debian's package (apt-get install chromium); .ci/run installs it"
    )


def headless(url: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            *arguments,
            url,
        ],
        capture_output=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )


def loaded_images(url: str, profile: Path) -> Counter[str]:
    result = headless(url, profile, "--dump-dom")
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    dom = result.stdout.decode("utf-8", "replace")
    assert "data-images-checked" in dom, "the page's image check did not run"
    return Counter(re.findall(r'data-loaded="(\w+)"', dom))


def test_page_opens_in_headless_chromium_with_every_image(
    saturation_report: Report, tmp_path: Path
) -> None:
    from matplotlib.image import imread

    url = saturation_report.index.resolve().as_uri()
    screenshot = tmp_path / "page.png"
    result = headless(
        url, tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1280,2000"
    )
    assert result.returncode == 0 and screenshot.exists(), result.stderr.decode()[-2000:]
    pixels = imread(str(screenshot))[:, :, :3]
    colours = {tuple(pixel) for pixel in (pixels[::4, ::4].reshape(-1, 3) * 255).astype(int)}
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    not_white = (pixels.reshape(-1, 3) < 0.95).any(axis=1).mean()
    assert not_white > 0.1

    images = len(saturation_report.charts)
    assert loaded_images(url, tmp_path / "profile-dom") == Counter({"true": images})

    # The check can fail: a page with a broken image says so.
    page = saturation_report.index.read_text(encoding="utf-8")
    broken = tmp_path / "broken.html"
    broken.write_text(
        page.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1),
        encoding="utf-8",
    )
    assert loaded_images(broken.as_uri(), tmp_path / "profile-broken") == Counter(
        {"true": images - 1, "false": 1}
    )


# -------------------------------------------------------------------------- the commands


def test_compare_shows_pooled_beating_unpooled(recorded: Recorded, tmp_path: Path) -> None:
    result = loadsim_cli("compare", str(recorded.pooled), "--out", "compared", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {
        line[:22].strip(): line[22:].split()
        for line in result.stdout.splitlines()
        if line.strip() and not line.startswith(" ")
    }
    header = result.stdout.splitlines()[0].split()
    assert header == ["pooled", "unpooled"]

    def number(text: str) -> float:
        return float(text.replace(",", ""))

    pooled, unpooled = (number(value) for value in rows["checkouts/s"])
    assert pooled > unpooled > 0
    connects = [number(value) for value in rows["connects"]]
    assert connects[0] < connects[1]
    assert re.search(r"pooled made [\d.]+x the checkouts/s of unpooled", result.stdout)
    for name in ("comparison.png", "comparison-over-time.png", "index.html"):
        assert (tmp_path / "compared" / name).stat().st_size > 0


def test_compare_several_logs(recorded: Recorded, tmp_path: Path) -> None:
    result = loadsim_cli(
        "compare", str(recorded.saturation), str(recorded.pooled), "--out", "c", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == [
        "saturation",
        "exhaustion",
        "pooled",
        "unpooled",
    ]


def test_report_reads_standard_input(recorded: Recorded, tmp_path: Path) -> None:
    result = loadsim_cli(
        "report", "-", "--out", "from-stdin", cwd=tmp_path, stdin=recorded.instances.read_bytes()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(Path("from-stdin") / "index.html")
    assert len(list((tmp_path / "from-stdin").glob("*.png"))) == 4
    assert "&lt;stdin&gt;" in (tmp_path / "from-stdin" / "index.html").read_text(encoding="utf-8")


def test_a_malformed_line_is_an_error_naming_it(recorded: Recorded, tmp_path: Path) -> None:
    lines = recorded.saturation.read_bytes().splitlines(keepends=True)
    log = tmp_path / "bad.jsonl"
    log.write_bytes(b"".join([*lines[:41], b'{"t": 1.0, "event": "pool.check\n', *lines[41:]]))
    result = loadsim_cli("report", str(log), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("loadsim: error: ")
    assert "bad.jsonl: line 42 is not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad-report").exists()


def test_a_truncated_last_line_is_tolerated_and_said(recorded: Recorded, tmp_path: Path) -> None:
    content = recorded.saturation.read_bytes()
    cut = content[: len(content) // 2]
    assert not cut.endswith(b"\n")
    complete_lines = cut.count(b"\n")
    log = tmp_path / "cut.jsonl"
    log.write_bytes(cut)
    result = loadsim_cli("report", str(log), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"cut.jsonl: line {complete_lines + 1} is cut short" in result.stderr
    assert "has no run.end" in result.stderr
    page = (tmp_path / "cut-report" / "index.html").read_text(encoding="utf-8")
    assert "is cut short" in page  # the page says so too


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"level": "info", "msg": "hello", "time": 1}\n', "line 1: not a loadsim run log"),
        (b"2024-01-01 INFO started\n", "line 1 is not JSON: this is not a loadsim run log"),
        (b"", "empty: no events"),
        (
            b'{"ts": "x", "t": 0, "event": "run.start", "scenario": "s", "schema_version": 99}\n',
            "schema_version 99 is not one this loadsim reads",
        ),
    ],
    ids=["other-jsonl", "plain-text", "empty", "newer-schema"],
)
def test_a_log_from_another_tool_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    log = tmp_path / "other.jsonl"
    log.write_bytes(content)
    # compare reads logs as report does: one case is enough for it
    for command in ("report", "compare") if not content else ("report",):
        result = loadsim_cli(command, str(log), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_a_missing_log_is_refused(tmp_path: Path) -> None:
    result = loadsim_cli("report", "nowhere.jsonl", cwd=tmp_path)
    assert result.returncode == 2
    assert "nowhere.jsonl: no such file" in result.stderr


def test_the_report_never_imports_the_run_side(recorded: Recorded, tmp_path: Path) -> None:
    log = tmp_path / "short.jsonl"
    log.write_text("".join(first_lines(recorded.saturation, 200)), encoding="utf-8")
    script = (
        "import sys\n"
        "from loadsim.report import build_comparison, build_report\n"
        f"build_report([{str(log)!r}], __import__('pathlib').Path('o'))\n"
        f"build_comparison([{str(log)!r}], __import__('pathlib').Path('c'))\n"
        "run_side = ['loadsim.run', 'loadsim.config', 'sqlalchemy', 'asyncpg', 'structlog']\n"
        "print([m for m in run_side if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.fixture(autouse=True)
def _no_stray_files() -> Iterator[None]:
    """Reports are written where the test says, never in the repository."""
    yield
    assert not list(Path(__file__).resolve().parent.parent.glob("*-report"))
