"""README.md's jq lines and example outputs, run against the scenarios they name.

Every `loadsim run SCENARIO | jq ...` line of the README is run for real (with a shorter
`--duration` where the lesson still shows) and its program applied to that scenario's stream
with libjq (the PyPI `jq` package, so that no jq need be installed): it must parse, select
something, and every field it picks must be in each event it picked it from. The threshold
example's line must be what `loadsim run` prints, with a count that runs produce.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jq
import pytest

from tests.helpers import REPOSITORY, by_name, parse_events, run_loadsim

README = (REPOSITORY / "README.md").read_text(encoding="utf-8")
SHELL_BLOCKS = re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)

#: How long each scenario runs for its jq lines: as short as still shows what they select
#: (scenarios of the same duration run in one invocation).
DURATIONS = {
    "normal": "3s",
    "saturation": "3s",
    "pre-ping": "3s",  # the restart is at 2 s
    "leak": "4s",  # leaks suspected at 2 s after the leakers' start at 1 s
    "recycle-off": "4s",  # sessions idle past 2 s are closed by the server, then met (~2.5 s)
    "pre-ping-off": "4s",
    "long-transactions": "4s",  # the long transactions start at 2 s
    "statement-timeout": "3s",  # about one query in seven outlasts 200 ms: several in 3 s
    "client-deadline": "3s",
    "sequential": "3s",
    "fairness": "3s",  # the line scrambles in the first second
    "memory-growth": "3s",  # a burst each 800 ms from 500 ms on
    "memory-growth-capped": "3s",
}
#: The threshold example, run as the README shows it; its events serve exhaustion's jq line.
THRESHOLD_EXAMPLE = re.compile(
    r"^\$ loadsim run (?P<arguments>.*?) > /dev/null\n(?P<output>loadsim: threshold failed .*)$",
    flags=re.MULTILINE,
)
#: How far the README's count may be from a run's: runs differ by a few timeouts at most.
COUNT_TOLERANCE = 0.25


@dataclass(frozen=True)
class JqLine:
    line: str
    scenario: str
    slurp: bool
    program: str


def jq_lines() -> list[JqLine]:
    found = []
    pattern = re.compile(r"^loadsim run ([a-z-]+) \| jq(?: -([cs]))? '(.*)'$")
    for block in SHELL_BLOCKS:
        for line in block.splitlines():
            match = pattern.match(line.strip())
            if match:
                scenario, option, program = match.groups()
                found.append(JqLine(line.strip(), scenario, option == "s", program))
            else:
                assert "| jq" not in line, f"a jq line this test does not understand: {line}"
    return found


def threshold_example() -> tuple[list[str], str]:
    (match,) = [m for block in SHELL_BLOCKS if (m := THRESHOLD_EXAMPLE.search(block))]
    return shlex.split(match["arguments"]), match["output"]


@pytest.fixture(scope="module")
def streams(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each scenario's stdout lines (as `loadsim run SCENARIO` writes them), from one run per
    duration, and the threshold example's run."""
    directory = tmp_path_factory.mktemp("readme-jq")
    wanted = {line.scenario for line in jq_lines()}
    arguments, _ = threshold_example()
    by_duration: dict[str, list[str]] = {}
    for scenario in sorted(wanted - {arguments[0]}):
        by_duration.setdefault(DURATIONS[scenario], []).append(scenario)
    lines: dict[str, list[str]] = {}

    def record(result: subprocess.CompletedProcess[str]) -> None:
        assert "Traceback" not in result.stderr, result.stderr
        for line in result.stdout.splitlines():
            lines.setdefault(json.loads(line)["scenario"], []).append(line)

    with ThreadPoolExecutor(max_workers=1) as aside:  # the 10 s example beside the others
        example = aside.submit(
            run_loadsim, "run", *arguments, "--database-url", database_url, cwd=directory
        )
        for duration, scenarios in by_duration.items():
            result = run_loadsim(
                "run",
                *scenarios,
                "--duration",
                duration,
                "--database-url",
                database_url,
                "-q",
                cwd=directory,
            )
            assert result.returncode == 0, result.stderr
            record(result)
        threshold = example.result()
    record(threshold)
    return {"lines": lines, "threshold": threshold}


def test_the_readme_has_jq_lines_for_its_tour() -> None:
    lines = jq_lines()
    assert len(lines) >= 10
    assert {line.scenario for line in lines} <= {*DURATIONS, threshold_example()[0][0]}


def _split(program: str) -> tuple[str, str]:
    """`SELECTOR | PROJECTION` at the last top-level pipe (none inside brackets)."""
    depth, cut = 0, -1
    for index, char in enumerate(program):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "|" and depth == 0:
            cut = index
    assert cut > 0, program
    return program[:cut].strip(), program[cut + 1 :].strip()


def _fields(projection: str) -> list[str]:
    """The event fields a projection reads: `{a, b}`, `{a, name: (.b - .c)}` or `.a`."""
    if projection.startswith("{") and projection.endswith("}"):
        fields = []
        for item in (item.strip() for item in projection[1:-1].split(",")):
            if re.fullmatch(r"[a-z_]+", item):
                fields.append(item)
            else:
                match = re.fullmatch(r"[a-z_]+: \((.*)\)", item)
                assert match, f"a projection this test does not understand: {projection}"
                fields += re.findall(r"\.([a-z_]+)", match.group(1))
        return fields
    match = re.fullmatch(r"\.([a-z_]+)", projection)
    assert match, f"a projection this test does not understand: {projection}"
    return [match.group(1)]


@pytest.mark.parametrize("line", jq_lines(), ids=lambda line: line.line[12:60])
def test_a_readme_jq_line_selects_fields_its_events_have(
    line: JqLine, streams: dict[str, Any]
) -> None:
    text = "\n".join(streams["lines"][line.scenario])
    events = parse_events(text)
    output = jq.compile(line.program).input_text(text, slurp=line.slurp).all()
    assert output and any(value is not None for value in output), line.line

    # Each field it picks must be in each event it picked it from (not a null for a key
    # the event does not have).
    program = line.program
    if line.slurp:  # [.[] | SELECTOR | .field] | aggregate
        match = re.fullmatch(r"\[\.\[\] \| (.*)\] \| [a-z_]+", program)
        assert match, program
        program = match.group(1)
    selector, projection = _split(program)
    selecting = jq.compile(selector)
    selected = [event for event in events if selecting.input_value(event).all()]
    assert selected, line.line
    for field in _fields(projection):
        missing = sorted({event["event"] for event in selected if field not in event})
        assert not missing, f"{line.line}: {field!r} is not a field of {missing}"


def test_the_threshold_example_prints_what_a_run_prints(streams: dict[str, Any]) -> None:
    """`loadsim run exhaustion --threshold 'timeouts == 0'`: exit 1 and the README's line,
    with a count of timeouts that runs produce: the run's own client.timeout events."""
    _, shown = threshold_example()
    result = streams["threshold"]
    assert result.returncode == 1, result.stderr
    pattern = re.escape(shown)
    shown_count = re.search(r"= (\d+)\)$", shown)
    assert shown_count, shown
    pattern = pattern.replace(re.escape(f"= {shown_count.group(1)})"), r"= (\d+)\)")
    printed = re.search(pattern, result.stderr)
    assert printed, (shown, result.stderr)
    count = int(printed.group(1))
    events = parse_events(result.stdout)
    assert count == len(by_name(events, "client.timeout")) == events[-1]["summary"]["timeouts"]
    expected = int(shown_count.group(1))
    assert abs(count - expected) <= COUNT_TOLERANCE * expected, (count, expected)
