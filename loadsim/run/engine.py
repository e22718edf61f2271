"""Builds the `AsyncEngine` for a run from its pool settings, and SQLAlchemy's URL from a parsed
database URL (`config.urls` parses; nothing here reads URL text)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool

from loadsim.config.scenario import PoolConfig
from loadsim.config.urls import DatabaseUrl, parse_url

_RESET_ON_RETURN: dict[str, str | None] = {"rollback": "rollback", "commit": "commit", "none": None}


def application_name(run_id: str, instance: int | None = None) -> str:
    """What our sessions call themselves on the server (`pg_stat_activity.application_name`):
    `loadsim:RUN`, or `loadsim:RUN/K` for instance K of a fleet."""
    return f"loadsim:{run_id}" if instance is None else f"loadsim:{run_id}/{instance}"


def parse_database_url(raw: str) -> URL:
    """A user's URL, made to drive asyncpg; a bad or unsupported URL is a ScenarioError.
    The text is parsed once, by `config.urls`; SQLAlchemy's URL is built from the parts."""
    return to_sqlalchemy(parse_url(raw))


def to_sqlalchemy(parsed: DatabaseUrl) -> URL:
    query: dict[str, str] = {}
    if parsed.socket_directory is not None:
        query["host"] = parsed.socket_directory
    if parsed.ssl is not None:
        query["ssl"] = parsed.ssl
    if parsed.prepared_statement_cache_size is not None:
        query["prepared_statement_cache_size"] = str(parsed.prepared_statement_cache_size)
    return URL.create(
        "postgresql+asyncpg",
        username=parsed.username,
        password=parsed.password,
        host=parsed.host if parsed.socket_directory is None else None,
        port=parsed.port,
        database=parsed.database,
        query=query,
    )


def from_sqlalchemy(url: URL) -> DatabaseUrl:
    """The parts of a SQLAlchemy URL (one made by `to_sqlalchemy`, or the embedded server's)."""
    host = url.query.get("host") or url.host
    ssl = url.query.get("ssl")
    size = url.query.get("prepared_statement_cache_size")
    return DatabaseUrl(
        scheme=url.drivername,
        username=url.username,
        password=url.password or None,
        host=host if isinstance(host, str) or host is None else host[0],
        port=url.port,
        database=url.database,
        ssl=ssl if isinstance(ssl, str) else None,
        prepared_statement_cache_size=int(size) if isinstance(size, str) else None,
    )


def mask_url(url: URL) -> str:
    """The URL as it may be shown to a person: rendered from its parts, password `***`."""
    return from_sqlalchemy(url).render()


def render_url(url: URL) -> str:
    """The URL as text with its password, for a child process that parses it again with
    `parse_database_url` (SQLAlchemy's own rendering writes spaces as '+', which libpq's rules
    read as '+'). Never for a person."""
    return from_sqlalchemy(url).render(hide_password=False)


def create_engine(
    url: URL, pool: PoolConfig, name: str, session_settings: dict[str, str] | None = None
) -> AsyncEngine:
    """The engine under test, its sessions called `name` on the server. `session_settings`
    are server settings for each session it opens."""
    server_settings = {"application_name": name, **(session_settings or {})}
    options: dict[str, Any] = {
        "pool_pre_ping": pool.pool_pre_ping,
        "pool_recycle": pool.pool_recycle,
        "pool_reset_on_return": _RESET_ON_RETURN[pool.pool_reset_on_return],
        "echo_pool": pool.echo_pool,
        "connect_args": {"server_settings": server_settings},
    }
    if pool.pool_class == "null":
        options["poolclass"] = NullPool
    else:
        options.update(
            poolclass=AsyncAdaptedQueuePool,
            pool_size=pool.pool_size,
            max_overflow=pool.max_overflow,
            pool_timeout=pool.pool_timeout,
            pool_use_lifo=pool.pool_use_lifo,
        )
    if pool.echo_pool:
        _send_pool_log_to_stderr(options["poolclass"])
    return create_async_engine(url, **options)


def _send_pool_log_to_stderr(pool_class: type) -> None:
    """SQLAlchemy's echo_pool logs to stdout unless its logger has a handler: stdout is ours."""
    logger = logging.getLogger(f"sqlalchemy.pool.impl.{pool_class.__name__}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
