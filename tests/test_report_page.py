"""`loadsim report`'s page: every chart embedded, the summary and the configuration shown, text
from the log escaped, nothing from the network; opened in headless Chromium, which must show
every image. Drawn from the logs checked in under tests/data."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from loadsim.report import Report, build_report
from tests.components import debian_program
from tests.helpers import RecordedLogs, first_lines

pytestmark = pytest.mark.usefixtures("no_stray_reports")
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def test_page_embeds_every_chart_the_summary_and_the_configuration(
    saturation_report: Report,
) -> None:
    page = saturation_report.index.read_text(encoding="utf-8")
    files = sorted(saturation_report.out_dir.glob("*.png"))
    # two scenarios of five charts each (timeline, pool, distribution, latency, memory), and
    # the two comparing them
    assert len(files) == len(saturation_report.charts) == 2 * 5 + 2
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


def test_page_escapes_text_from_the_log(recorded: RecordedLogs, tmp_path: Path) -> None:
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
    return debian_program("chromium", *CHROMIUM_NAMES)


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
