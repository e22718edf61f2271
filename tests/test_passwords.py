"""Passwords are never shown. A database URL is parsed once (`loadsim/config/urls.py`, libpq's
rules), SQLAlchemy's URL is built from the parts, and what a person sees is rendered from the
parts without the password; a URL that cannot be read is an error that repeats nothing of it.

Fuzzed with passwords made of the characters that URLs give meaning to. Each holds a Greek
letter, and no output of loadsim holds one otherwise: a Greek letter anywhere in the output is
a leak, even of a piece of the password."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from loadsim import cli
from loadsim.config.settings import ENVIRONMENT_VARIABLES
from loadsim.config.urls import mask_url_text, parse_url
from loadsim.errors import ScenarioError
from loadsim.run.database import asyncpg_arguments
from loadsim.run.engine import mask_url, parse_database_url, render_url
from tests.helpers import RunLoadsim, parse_events

GREEK = "λξψωπφ"
ALPHABET = "@:/?#&=% " + "abcXYZ" + GREEK
PASSWORDS = st.builds(
    lambda before, letter, after: before + letter + after,
    st.text(ALPHABET, max_size=10),
    st.sampled_from(GREEK),
    st.text(ALPHABET, max_size=10),
)
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: a run fails at once, exit 3

#: The issue's URLs: a raw '@', '/', '?' and '#' in one password, and a raw '?' in another.
ISSUE_URLS = {
    "p@ss:w/rd%41?&#=x": "postgresql://tester:p@ss:w/rd%41?&#=x@host/db",
    "Xpa?ssY": "postgresql://tester:Xpa?ssY@host/db",
}


def url_forms(password: str, where: str = UNREACHABLE) -> dict[str, str]:
    """The ways a person may write `password` into a URL: percent-encoded (the right way) or
    raw, in the user info or as libpq's ?password= parameter."""
    encoded = quote(password, safe="")
    return {
        "encoded": f"postgresql://tester:{encoded}@{where}/db",
        "encoded query": f"postgresql://tester@{where}/db?password={encoded}",
        "raw": f"postgresql://tester:{password}@{where}/db",
        "raw query": f"postgresql://tester@{where}/db?password={password}",
    }


def leaks(password: str, text: str) -> bool:
    return password in text or any(letter in text for letter in GREEK)


def pieces(text: str, size: int = 4) -> list[str]:
    return [text[start : start + size] for start in range(len(text) - size + 1)]


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For `call`: an empty working directory (no .env) and no variable loadsim reads."""
    monkeypatch.chdir(tmp_path)
    for name in ENVIRONMENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield


def call(*arguments: str) -> tuple[int, str, str]:
    """`loadsim ARGS` in this process: its exit code, stdout and stderr. Real files stand in
    for stdout and stderr, as the event writer writes to file descriptors."""
    with (
        tempfile.TemporaryFile("w+", encoding="utf-8") as out,
        tempfile.TemporaryFile("w+", encoding="utf-8") as err,
    ):
        argv, sys.argv = sys.argv, ["loadsim", *arguments]
        code = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    cli.main()
                except SystemExit as stop:
                    code = stop.code if isinstance(stop.code, int) else 1
        finally:
            sys.argv = argv
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read()


# --------------------------------------------------------------------- the issue's URLs


@pytest.mark.parametrize("password", list(ISSUE_URLS))
def test_a_url_that_cannot_be_read_is_refused_without_echoing_it(
    loadsim: RunLoadsim, password: str
) -> None:
    url = ISSUE_URLS[password]
    run = loadsim("run", "normal", "--database-url", url, timeout=30)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "cannot parse the database URL" in run.stderr
    assert [piece for piece in pieces(password) if piece in run.stderr] == []
    show = loadsim("show", "normal", "--database-url", url)
    assert show.returncode == 0, show.stderr
    assert "cannot be used" in show.stdout
    assert [piece for piece in pieces(password) if piece in show.stdout + show.stderr] == []


def test_a_raw_at_sign_in_a_password_is_named_in_the_error() -> None:
    with pytest.raises(ScenarioError, match=r"more than one '@'.*%40"):
        parse_url("postgresql://tester:p@ss@host/db")
    with pytest.raises(ScenarioError, match="'@' comes after the host"):
        parse_url("postgresql://tester:pa/ss@host/db")


# ---------------------------------------------------------------------- the URL forms


def test_a_password_in_the_query_is_used_as_libpq_uses_it() -> None:
    url = parse_database_url("postgresql://tester@host/db?password=s%26cr%3Dt")
    assert url.password == "s&cr=t"
    assert asyncpg_arguments(url)["password"] == "s&cr=t"  # the control connection
    _, pool_arguments = url.get_dialect()().create_connect_args(url)
    assert pool_arguments["password"] == "s&cr=t"  # the pool's connections
    assert "password" not in url.query  # it travels as the password, not as a parameter
    assert mask_url(url) == "postgresql+asyncpg://tester:***@host/db"
    # As in libpq, a query parameter takes precedence over the part of the URL it names.
    assert parse_database_url("postgresql://u:first@h/db?password=second").password == "second"


def test_unix_socket_and_postgres_forms() -> None:
    socket = parse_database_url("postgresql:///db?host=/run/pg")
    assert asyncpg_arguments(socket) == {"host": "/run/pg", "database": "db"}
    assert mask_url(socket) == "postgresql+asyncpg:///db?host=/run/pg"
    encoded = parse_database_url("postgresql://me@%2Frun%2Fpg:5433/db")  # libpq's other way
    assert asyncpg_arguments(encoded) == {"host": "/run/pg", "port": 5433, "user": "me"} | {
        "database": "db"
    }
    short = parse_database_url("postgres://me:pw@db.example:6432/app?sslmode=require")
    assert (short.host, short.port, short.database, short.password) == (
        "db.example",
        6432,
        "app",
        "pw",
    )
    assert asyncpg_arguments(short)["ssl"] == "require"
    with pytest.raises(ScenarioError, match="unsupported database URL scheme 'mysql'"):
        parse_database_url("mysql://me:pw@h/db")


def test_an_unknown_parameter_after_a_query_password_is_not_named() -> None:
    """`?password=a&b=c` is the password `a&b=c` written raw: its tail is not shown."""
    with pytest.raises(ScenarioError) as caught:
        parse_url("postgresql://u@h/db?password=aλ&tailξ=x")
    assert not leaks("tailξ", str(caught.value))
    with pytest.raises(ScenarioError, match="unknown query parameter 'sslmod'"):
        parse_url("postgresql://u@h/db?sslmod=require")


def test_the_embedded_servers_url_reads_back(database_url: str) -> None:
    """What the session's server URL renders to (SQLAlchemy's text, and ours) parses again."""
    url = make_url(database_url)
    assert asyncpg_arguments(parse_database_url(database_url)) == asyncpg_arguments(url)
    assert asyncpg_arguments(parse_database_url(render_url(url))) == asyncpg_arguments(url)


# ------------------------------------------------------------------------------ fuzzed


@settings(max_examples=300, deadline=None)
@given(password=PASSWORDS)
def test_fuzzed_passwords_parse_back_or_are_refused_without_a_trace(password: str) -> None:
    for form, text in url_forms(password).items():
        try:
            url = parse_database_url(text)
        except ScenarioError as error:
            assert form.startswith("raw"), (form, text, error)
            assert not leaks(password, str(error)), (text, error)
            assert not leaks(password, mask_url_text(text))
            continue
        if form.startswith("encoded"):
            assert url.password == password, (form, text)
            assert parse_database_url(render_url(url)).password == password
        for shown in (mask_url(url), mask_url_text(text), parse_url(text).render()):
            assert not leaks(password, shown), (text, shown)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(password=PASSWORDS)
def test_fuzzed_passwords_never_reach_show(in_process: None, password: str) -> None:
    for text in url_forms(password).values():
        code, out, err = call("show", "normal", "--database-url", text)
        assert code == 0, err
        assert not leaks(password, out + err), (text, out, err)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(password=PASSWORDS)
def test_fuzzed_passwords_never_reach_a_runs_errors(in_process: None, password: str) -> None:
    for form, text in url_forms(password).items():
        code, out, err = call("run", "normal", "--iterations", "1", "--database-url", text)
        assert code in ((3,) if form.startswith("encoded") else (2, 3)), (text, err)
        assert out == ""
        assert "Traceback" not in err
        assert not leaks(password, out + err), (text, out, err)


@pytest.mark.parametrize("password", ["p@ss:w/rd%41?&#=xλ", " =&?ψ#/:@% "])
def test_fuzzed_passwords_never_reach_the_event_stream(
    loadsim: RunLoadsim, database_url: str, password: str
) -> None:
    """A real run, as a subprocess, against the session's server, which trusts local
    connections and so takes any password: run.start names the database, masked."""
    server = make_url(database_url)
    if server.password:
        pytest.skip("the test server checks passwords")
    for where in ("userinfo", "query"):
        base = render_url(server)
        encoded = quote(password, safe="")
        if where == "userinfo":
            text = render_url(server.set(password=password))
        else:
            text = f"{base}{'&' if '?' in base else '?'}password={encoded}"
        assert parse_database_url(text).password == password
        run = loadsim("run", "normal", "--iterations", "1", "--database-url", text)
        assert run.returncode == 0, run.stderr
        assert not leaks(password, run.stdout + run.stderr)
        events = parse_events(run.stdout)
        assert events[0]["event"] == "run.start"
        assert ":***@" in events[0]["database"]


def test_a_fleet_hands_its_instances_a_url_they_read_back(loadsim: RunLoadsim) -> None:
    """A fleet passes the URL to its instances as text: rendered by the same rules it is
    parsed by, so a socket directory holding a space and a '+' survives (SQLAlchemy's own
    rendering writes the space as '+', which libpq's rules read as a '+')."""
    temporary = Path(tempfile.mkdtemp(prefix="loadsim a+b "))
    try:
        temporary.chmod(0o711)  # the server account's way to its own directory inside
        run = loadsim(
            "run", "normal", "--iterations", "2", "--instances", "2", env={"TMPDIR": str(temporary)}
        )
        assert run.returncode == 0, run.stderr
        events = parse_events(run.stdout)
        assert {event["instance"] for event in events if event["event"] == "run.end"} == {0, 1}
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


# A successful run with a password: the stream, the output file, the console log, show, and
# SQLAlchemy's own pool log.
RUN_SECRET = "s3cret-Pa55word"


def test_no_password_appears_anywhere(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    with_secret = (
        make_url(database_url).set(password=RUN_SECRET).render_as_string(hide_password=False)
    )
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
        assert RUN_SECRET not in result.stdout
        assert RUN_SECRET not in result.stderr
    assert RUN_SECRET not in output.read_text()
    assert "***" in show.stdout
