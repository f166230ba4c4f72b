"""The async engine and session factory, created once per process and injected."""

import time
from typing import Any

import asyncpg
from sqlalchemy import event, exc
from sqlalchemy import exc as sa_exc
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


# A database that does not answer fails a request in seconds (the API answers 503) rather than
# after asyncpg's default minute; a refused connection fails at once anyway.
CONNECT_TIMEOUT_SECONDS = 3.0
POOL_TIMEOUT_SECONDS = 10.0


class DatabaseUnreachable(Exception):
    """A new connection to Postgres could not be made (refused, no socket, no answer in time).

    Not an OSError on purpose: asyncpg raises the socket's own error (ConnectionRefusedError,
    FileNotFoundError for a Unix socket...), which cannot be told from any other OSError by the
    time it reaches the API; this says where it came from."""


async def _connect(*args: Any, **kwargs: Any) -> Any:
    try:
        return await asyncpg.connect(*args, **kwargs)
    except OSError as err:  # includes TimeoutError
        raise DatabaseUnreachable(f"{type(err).__name__}: {err or 'no detail'}") from err


# Connections a pool opens past `pool_size` for a burst, and closes again when they are handed
# back. Kept small: a connection opened for one request costs a Postgres backend start and
# the re-preparing of every statement (asyncpg caches them per connection); at 32 requests in
# flight with a pool of 10 that churn was a tenth of the API's CPU per event and most of
# Postgres's (docs/benchmarks.md). Size the pool (DATABASE_POOL_SIZE) for the load instead.
POOL_OVERFLOW = 10


def create_engine(database_url: str, *, pool_size: int = 20) -> AsyncEngine:
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=POOL_OVERFLOW,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args={"timeout": CONNECT_TIMEOUT_SECONDS, "async_creator_fn": _connect},
    )
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


# What a database that is away (stopped, restarting, failing over, unreachable) raises: a
# connection that cannot be made (DatabaseUnreachable), one cut mid-request (asyncpg's
# connection errors, wrapped by SQLAlchemy or not), a pool with no connection to give in time.
_CONNECTION_ERRORS = (
    DatabaseUnreachable,
    asyncpg.PostgresConnectionError,  # includes "the database system is shutting down"
    asyncpg.InterfaceError,  # "connection is closed"
)


def database_away(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        orig = exc.orig  # SQLAlchemy's adapter of an asyncpg error, which it causes
        return exc.connection_invalidated or any(
            isinstance(e, _CONNECTION_ERRORS) for e in (orig, getattr(orig, "__cause__", None))
        )
    return isinstance(exc, _CONNECTION_ERRORS)
