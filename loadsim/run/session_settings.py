"""The server settings of our sessions, checked against the server before a run starts.

A scenario's `[session]` table and its `[faults]` idle timeouts are sent as asyncpg's
`server_settings` by every connection the pool opens (`engine.create_engine`): they apply to
our sessions only, never to the server as a whole. What the server would refuse (a setting it
does not have, a value it cannot read, one we may not set) is found here, with one trial
connection that sends the same settings, so that it is one error naming the setting instead
of a connect error for every client of the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from loadsim.errors import DatabaseUnavailable, ScenarioError
from loadsim.run.database import (
    ServerObserver,
    asyncpg_arguments,
    missing_settings,
)

#: Settings that came to PostgreSQL in version 14 (the idle timeouts of `[faults]` use one).
_SINCE_14 = frozenset({"idle_session_timeout"})
#: How long the trial connection may take.
TRIAL_TIMEOUT_S = 10.0


async def check_session_settings(
    settings: Mapping[str, str], url: URL, observer: ServerObserver, scenario: str
) -> None:
    """Fails before the run when the server would refuse a setting of our sessions:
    ScenarioError (exit 2) for a setting it does not have or a value it cannot take,
    DatabaseUnavailable (exit 3) for one this role may not set."""
    if not settings:
        return
    where = f"scenario {scenario!r}"
    # Dotted names are an extension's or the application's own: the server takes any of them.
    plain = [name for name in settings if "." not in name]
    missing = await missing_settings(await observer.open(), plain) if plain else []
    if missing:
        version = " (it needs PostgreSQL 14 or newer)" if _SINCE_14 & set(missing) else ""
        raise ScenarioError(f"{where}: this server has no setting {', '.join(missing)}{version}")
    problem = await _refusal(url, dict(settings))
    if problem is None:
        return
    named = f"session settings {', '.join(settings)}"
    # Which one: each alone (only when something was refused; the usual run connects once).
    for name, value in settings.items():
        refused = await _refusal(url, {name: value})
        if refused is not None:
            problem, named = refused, f"session setting {name} = {value!r}"
            break
    error, message = problem
    if isinstance(error, asyncpg.InsufficientPrivilegeError):
        raise DatabaseUnavailable(f"{where}: {named}: the server does not let us set it: {message}")
    raise ScenarioError(f"{where}: {named}: the server refuses it: {message}")


async def _refusal(url: URL, settings: dict[str, str]) -> tuple[Exception, str] | None:
    """The server's error for a session opened with `settings` (None: it took them)."""
    try:
        connection: Any = await asyncpg.connect(
            **asyncpg_arguments(url),
            timeout=TRIAL_TIMEOUT_S,
            server_settings={"application_name": "loadsim-control", **settings},
        )
    except asyncpg.PostgresError as error:
        if _is_about_a_setting(error):
            return error, _one_line(error)
        raise DatabaseUnavailable(f"the database refused our session: {_one_line(error)}") from None
    except (OSError, TimeoutError, asyncpg.InterfaceError) as error:
        raise DatabaseUnavailable(
            f"cannot reach the database to check our sessions' settings: {error}"
        ) from None
    await connection.close()
    return None


def _is_about_a_setting(error: asyncpg.PostgresError) -> bool:
    """Errors a setting causes: an invalid value (22023), an unknown name (42704), one we may
    not set (42501), one that cannot be set at connection start (55P02, 0A000)."""
    return getattr(error, "sqlstate", None) in {"22023", "42704", "42501", "55P02", "0A000"}


def _one_line(error: asyncpg.PostgresError) -> str:
    """The server's message (and its hint, which asyncpg puts on a line of its own) as one
    line."""
    return " ".join(str(error).split())
