"""The async engine and session factory, created once per process and injected."""

import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SessionFactory = async_sessionmaker[AsyncSession]

# A pooled connection unused for longer than this is pinged before it is handed out. SQLAlchemy's
# `pool_pre_ping` pings at every checkout, which with asyncpg is three round trips (BEGIN, ";",
# ROLLBACK): under load that was 15 of an enrollment request's ~36. A connection used moments ago
# is alive; one idle for a while may have been cut by a Postgres restart or a proxy, and is
# replaced before any request sees it.
IDLE_PING_SECONDS = 2.0


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    engine = create_async_engine(database_url, pool_size=pool_size)
    ping_when_idle(engine)
    return engine


def ping_when_idle(engine: AsyncEngine, idle_seconds: float = IDLE_PING_SECONDS) -> None:
    """Ping a pooled connection at checkout only when it sat idle longer than `idle_seconds`;
    a dead one is replaced (the pool retries the checkout with a fresh connection)."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return  # fresh, or in use moments ago
        try:
            dbapi_connection.ping()
        except Exception as err:  # a dead connection: the pool retries with a new one
            raise exc.DisconnectionError(f"pooled connection failed its ping: {err}") from err


def session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)
