"""Database URLs: one parser, libpq's rules, and a masked form made from the parsed parts.

A URL is split by the standard library's `urllib.parse` and read as libpq reads it:
`postgresql://user:password@host:port/database?parameter=value`, every part percent-decoded,
query parameters (`host`, `port`, `user`, `password`, `dbname`) taking precedence over the
parts before them. `postgres://` and `postgresql+asyncpg://` are the same thing. The run side
builds SQLAlchemy's URL from the parsed parts (`run/engine.py`); everything shown to a person
is `DatabaseUrl.render()`, which never holds the password. A URL that cannot be read is a
ScenarioError that says why without repeating the URL: when a URL is malformed, nobody can
tell which of its characters belong to the password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from loadsim.errors import ScenarioError

SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")
EXPECTED = "expected postgresql://user:password@host:port/database"
#: The query parameters loadsim understands: libpq's names for the parts of the URL, `sslmode`
#: (or asyncpg's `ssl`) and SQLAlchemy's asyncpg option `prepared_statement_cache_size`.
PARAMETERS = (
    *("host", "port", "user", "password", "dbname", "sslmode", "ssl"),
    "prepared_statement_cache_size",
)
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
MASK = "***"

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENCODE_PASSWORD = (
    "percent-encode any of @ : / ? # & = % in a user name or password "
    "(as %40 %3A %2F %3F %23 %26 %3D %25)"
)


class DatabaseUrlError(ScenarioError):
    """A URL that cannot be read; the message says why and repeats nothing of the URL."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot parse the database URL: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class DatabaseUrl:
    """A database URL, parsed. `host` is a name, an address, or a unix-socket directory (an
    absolute path); None means libpq's default."""

    scheme: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    ssl: str | None = None
    prepared_statement_cache_size: int | None = None

    @property
    def socket_directory(self) -> str | None:
        return self.host if self.host is not None and self.host.startswith("/") else None

    def render(self, *, hide_password: bool = True) -> str:
        """The URL as text that this parser reads back to the same parts; the password is
        `***` unless `hide_password` is False (for a child process, never for a person)."""
        userinfo = ""
        if self.username is not None or self.password is not None:
            userinfo = _quote(self.username or "")
            if self.password is not None:
                userinfo += ":" + (MASK if hide_password else _quote(self.password))
            userinfo += "@"
        host = ""
        if self.host is not None and self.socket_directory is None:
            host = f"[{self.host}]" if ":" in self.host else _quote(self.host)
        port = f":{self.port}" if self.port is not None else ""
        path = f"/{_quote(self.database)}" if self.database is not None else ""
        parameters = []
        if self.socket_directory is not None:
            parameters.append(f"host={quote(self.socket_directory, safe='/')}")
        if self.ssl is not None:
            parameters.append(f"sslmode={self.ssl}")
        if self.prepared_statement_cache_size is not None:
            parameters.append(f"prepared_statement_cache_size={self.prepared_statement_cache_size}")
        query = "?" + "&".join(parameters) if parameters else ""
        return f"{self.scheme}://{userinfo}{host}{port}{path}{query}"


def parse_url(raw: str) -> DatabaseUrl:
    """Parses a user's database URL; a ScenarioError, which never repeats the URL, when it
    cannot be read unambiguously."""
    text = raw.strip()
    scheme_match = _SCHEME.match(text)
    if scheme_match is None:
        raise _error(f"it does not start with a scheme such as postgresql://; {EXPECTED}")
    scheme = scheme_match.group(1).lower()
    if scheme not in SCHEMES:
        raise ScenarioError(
            f"unsupported database URL scheme {scheme!r}: loadsim drives PostgreSQL through "
            "asyncpg; use postgresql://, postgres:// or postgresql+asyncpg://"
        )
    if _CONTROL.search(text):
        raise _error("it contains a control character (a tab or a line break, say)")
    if text.count("@") > 1:
        raise _error(
            "it has more than one '@', so where the password ends is unclear: write an '@' in "
            f"a user name or password as %40; {_ENCODE_PASSWORD}"
        )
    if "#" in text:
        raise _error(f"it contains a '#', which a database URL cannot hold; {_ENCODE_PASSWORD}")
    try:
        parts = urlsplit(text)
    except ValueError:
        raise _error(f"{EXPECTED}; {_ENCODE_PASSWORD}") from None
    authority = parts.netloc
    rest = parts.path + ("?" + parts.query if parts.query else "")
    if "@" in rest:
        raise _error(
            "its '@' comes after the host: a user name or password holding a '/' or '?' "
            f"ends there and the rest spills into the URL; {_ENCODE_PASSWORD}"
        )
    if _BAD_PERCENT.search(text):
        raise _error(f"it has a '%' that does not begin a %XX escape; {_ENCODE_PASSWORD}")

    userinfo, at, hostport = authority.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = _decode(user_text, "user name") or None
        password = _decode(password_text, "password") if colon else None
    host, port = _host_and_port(hostport)
    database = _decode(parts.path[1:], "database name") if parts.path else None
    url = DatabaseUrl(scheme, username, password or None, host, port, database or None)
    return _with_parameters(url, parts.query)


def mask_url_text(raw: str) -> str:
    """A user's URL as it may be shown: parsed and rendered without its password, or, when it
    cannot be parsed, a note saying so that repeats nothing of it."""
    try:
        return parse_url(raw).render()
    except DatabaseUrlError as error:
        return f"(cannot be used: {error.reason})"
    except ScenarioError as error:  # a scheme loadsim does not drive
        return f"(cannot be used: {error})"


# ------------------------------------------------------------------------------- internals


def _error(reason: str) -> DatabaseUrlError:
    return DatabaseUrlError(reason)


def _quote(text: str) -> str:
    return quote(text, safe="")


def _decode(text: str, what: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise _error(f"its {what} has %XX escapes that are not UTF-8") from None


def _host_and_port(hostport: str) -> tuple[str | None, int | None]:
    if "," in hostport:
        raise _error("it names several hosts; loadsim connects to one")
    if hostport.startswith("["):  # an IPv6 address
        address, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise _error("an IPv6 address must be written in brackets, [::1]:5432")
        host, port_text = address, after[1:]
    else:
        if hostport.count(":") > 1:
            raise _error("an IPv6 address must be written in brackets, [::1]:5432")
        host, _, port_text = hostport.partition(":")
    return _decode(host, "host") or None, _port(port_text)


def _port(text: str) -> int | None:
    if not text:
        return None
    # Never repeated: when the host is missing, what stands here may be a password.
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise _error(f"its port is not a number from 1 to 65535; {_ENCODE_PASSWORD}")
    return int(text)


def _with_parameters(url: DatabaseUrl, query: str) -> DatabaseUrl:
    """libpq's query parameters, each overriding the part of the URL it names."""
    pairs = []
    for piece in query.split("&"):
        if not piece:
            continue
        name, equals, value = piece.partition("=")
        if not equals or "=" in value:
            raise _error(
                "a query parameter is not one name=value pair; in a value, write & as %26 "
                "and = as %3D"
            )
        pairs.append((_decode(name, "query"), value))
    secret = any(name == "password" for name, _ in pairs)
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in PARAMETERS:
            # An '&' in a ?password= value makes a parameter of the password's tail.
            named = "" if secret else f" {name!r}"
            raise _error(
                f"unknown query parameter{named} (loadsim reads {', '.join(PARAMETERS)}); "
                "in a value, write & as %26"
            )
        values[name] = _decode(value, name)
    changes: dict[str, Any] = {}
    if "host" in values:
        changes["host"] = values["host"] or None
    if "port" in values:
        changes["port"] = _port(values["port"])
    if "user" in values:
        changes["username"] = values["user"] or None
    if "password" in values:
        changes["password"] = values["password"] or None
    if "dbname" in values:
        changes["database"] = values["dbname"] or None
    ssl = values.get("sslmode", values.get("ssl"))
    if ssl is not None:
        if ssl not in SSL_MODES:
            raise _error(f"sslmode must be one of {', '.join(SSL_MODES)}")
        changes["ssl"] = ssl
    if "prepared_statement_cache_size" in values:
        size = values["prepared_statement_cache_size"]
        if not size.isascii() or not size.isdigit():
            raise _error("prepared_statement_cache_size must be a whole number")
        changes["prepared_statement_cache_size"] = int(size)
    return replace(url, **changes)
