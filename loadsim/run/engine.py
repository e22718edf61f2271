"""Builds the `AsyncEngine` for a run from its pool settings."""

from __future__ import annotations

import logging
import sys
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool

from loadsim.config.scenario import PoolConfig
from loadsim.config.urls import mask_url_text
from loadsim.errors import ScenarioError

_RESET_ON_RETURN: dict[str, str | None] = {"rollback": "rollback", "commit": "commit", "none": None}
_ACCEPTED_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")


def application_name(run_id: str, instance: int | None = None) -> str:
    """What our sessions call themselves on the server (`pg_stat_activity.application_name`):
    `loadsim:RUN`, or `loadsim:RUN/K` for instance K of a fleet."""
    return f"loadsim:{run_id}" if instance is None else f"loadsim:{run_id}/{instance}"


def parse_database_url(raw: str) -> URL:
    """A user's URL, made to drive asyncpg; a bad or unsupported URL is a ScenarioError."""
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ScenarioError(
            f"cannot parse database URL {mask_url_text(raw)!r}: expected "
            "postgresql://user:password@host:port/database"
        ) from None
    if url.drivername not in _ACCEPTED_SCHEMES:
        raise ScenarioError(
            f"unsupported database URL scheme {url.drivername!r}: loadsim drives PostgreSQL "
            "through asyncpg; use postgresql://, postgres:// or postgresql+asyncpg://"
        )
    return url.set(drivername="postgresql+asyncpg")


def mask_url(url: URL) -> str:
    return mask_url_text(url.render_as_string(hide_password=True))


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
