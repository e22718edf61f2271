"""A password given to loadsim never appears in what it writes: the event stream, the output
file, the console log, `show`, or SQLAlchemy's own pool log."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from tests.helpers import RunLoadsim

SECRET = "s3cret-Pa55word"


def test_no_password_appears_anywhere(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    with_secret = make_url(database_url).set(password=SECRET).render_as_string(hide_password=False)
    output = tmp_path / "run.jsonl"
    run = loadsim(
        "run",
        "normal",
        "--iterations",
        "2",
        "--database-url",
        with_secret,
        "--output",
        str(output),
        "--log-format",
        "json",
    )
    assert run.returncode == 0, run.stderr
    console = loadsim(
        "run",
        "normal",
        "--iterations",
        "1",
        "--log-format",
        "console",
        env={"DATABASE_URL": with_secret},
    )
    show = loadsim("show", "normal", "--database-url", with_secret)
    echo = loadsim(
        "run",
        "normal",
        "--iterations",
        "1",
        env={"DATABASE_URL": with_secret, "ECHO_POOL": "debug"},
    )
    for result in (run, console, show, echo):
        assert result.returncode == 0, result.stderr
        assert SECRET not in result.stdout
        assert SECRET not in result.stderr
    assert SECRET not in output.read_text()
    assert "***" in show.stdout
