"""`--log-format console`: one line per event for people, coloured by kind on a terminal."""

from __future__ import annotations

import json

import pytest

from loadsim.run.events import ConsoleLines
from tests.helpers import RunLoadsim


def test_console_format_is_for_people(loadsim: RunLoadsim, database_url: str) -> None:
    result = loadsim(
        "run",
        "normal",
        "--iterations",
        "2",
        "--log-format",
        "console",
        "--database-url",
        database_url,
    )
    assert result.returncode == 0, result.stderr
    assert "client.acquired" in result.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout.splitlines()[0])


def test_console_format_colours_events_by_kind() -> None:
    render_line = ConsoleLines(colours=True)
    timeout = render_line(None, "info", {"event": "client.timeout", "t": 1.0, "client": 3})
    checkout = render_line(None, "info", {"event": "pool.checkout", "t": 1.0, "conn": 1})
    assert "\x1b[1;31m" in timeout and "client=3" in timeout
    assert "\x1b[36m" in checkout and "conn=1" in checkout
    plain = ConsoleLines(colours=False)(None, "info", {"event": "client.timeout", "t": 1.0})
    assert "\x1b[" not in plain
