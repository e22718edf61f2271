"""What a person at a terminal meets: the real command under a real pseudo-terminal.

With stdout on a terminal, the JSONL stream is kept off it (one line says how to get it) and
the dashboard and the summary are what is shown; `--log-format console` still prints its
lines there; piped, stdout is the JSONL stream as ever, and `--output` gets every event.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

from tests.helpers import by_name, clean_environment, loadsim_command, parse_events

#: rich's escape sequences: colours, cursor moves, erasing, the cursor's visibility.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def _terminal() -> tuple[int, int]:
    """A pseudo-terminal (controller, terminal) 120 columns wide, as a person's would be."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    return controller, terminal


def _read_all(controller: int, process: subprocess.Popen[bytes], timeout: float = 60) -> bytes:
    """Everything written to the terminal until the process ends (and its last bytes)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif process.poll() is not None:
            break
    return b"".join(chunks)


def _on_terminal(
    *arguments: str, cwd: Path, stdout_on_terminal: bool = True
) -> tuple[int, str, str]:
    """Runs `loadsim ARGS` with stderr (and stdout, unless piped) on a pseudo-terminal:
    (exit status, what the terminal showed with escapes removed, what the pipe got)."""
    controller, terminal = _terminal()
    process = subprocess.Popen(
        loadsim_command(*arguments),
        stdin=subprocess.DEVNULL,
        stdout=terminal if stdout_on_terminal else subprocess.PIPE,
        stderr=terminal,
        env=clean_environment(TERM="xterm-256color", COLUMNS="120"),
        cwd=cwd,
    )
    os.close(terminal)
    piped: list[bytes] = []
    reader = threading.Thread(
        target=lambda: piped.append(process.stdout.read() if process.stdout else b"")
    )
    reader.start()
    try:
        shown = _read_all(controller, process)
        reader.join(timeout=30)
        status = process.wait(timeout=30)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    return status, _ESCAPES.sub("", shown.decode("utf-8", "replace")), b"".join(piped).decode()


def _json_lines(text: str) -> list[str]:
    """The lines of `text` that are JSON objects: events, if anything wrote them."""
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("{"):
            try:
                json.loads(stripped)
            except ValueError:
                continue
            found.append(stripped)
    return found


def test_a_terminal_gets_the_dashboard_and_summary_not_jsonl(
    tmp_path: Path, database_url: str
) -> None:
    status, shown, _ = _on_terminal(
        "run", "normal", "--duration", "2s", "--database-url", database_url, cwd=tmp_path
    )
    assert status == 0, shown
    assert _json_lines(shown) == []
    assert '"event"' not in shown
    hints = [line for line in shown.splitlines() if "no JSONL on a terminal" in line]
    assert len(hints) == 1, shown
    assert len(hints[0]) <= 100  # one line on a terminal of 100 columns
    assert "| jq" in hints[0] and "--output FILE" in hints[0] and "--log-format console" in hints[0]
    assert "checkouts per connect" in shown and "elapsed s (measured window)" in shown
    assert "loadsim · normal" in shown  # the dashboard was drawn
    assert "Traceback" not in shown


def test_output_gets_every_event_while_the_terminal_gets_none(
    tmp_path: Path, database_url: str
) -> None:
    log = tmp_path / "run.jsonl"
    status, shown, _ = _on_terminal(
        "run", "normal", "-d", "1s", "-o", str(log), "--database-url", database_url, cwd=tmp_path
    )
    assert status == 0, shown
    assert _json_lines(shown) == []
    assert f"JSONL goes to {log} only" in shown
    events = parse_events(log.read_text())
    assert by_name(events, "run.start") and by_name(events, "run.end")
    checkouts = by_name(events, "client.acquired")
    assert len(checkouts) == by_name(events, "run.end")[0]["summary"]["checkouts"] > 0


def test_console_format_still_prints_on_a_terminal(tmp_path: Path, database_url: str) -> None:
    status, shown, _ = _on_terminal(
        "run",
        "normal",
        "--iterations",
        "2",
        "--log-format",
        "console",
        "--database-url",
        database_url,
        cwd=tmp_path,
    )
    assert status == 0, shown
    assert "client.acquired" in shown and "run.end" in shown
    assert "no JSONL on a terminal" not in shown
    assert _json_lines(shown) == []


def test_piped_stdout_stays_pure_jsonl_beside_a_terminal(tmp_path: Path, database_url: str) -> None:
    status, shown, piped = _on_terminal(
        "run",
        "normal",
        "-d",
        "1s",
        "--database-url",
        database_url,
        cwd=tmp_path,
        stdout_on_terminal=False,
    )
    assert status == 0, shown
    events = parse_events(piped)  # every line JSON, every event as the schema declares it
    assert (
        len(by_name(events, "client.acquired"))
        == by_name(events, "run.end")[0]["summary"]["checkouts"]
    )
    assert "no JSONL on a terminal" not in shown
    assert "checkouts per connect" in shown  # the summary is on the terminal (stderr)
