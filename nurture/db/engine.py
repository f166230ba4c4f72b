"""The async engine and session factory, created once per process and injected."""

from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SessionFactory = async_sessionmaker[AsyncSession]


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


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        pool_pre_ping=True,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args={"timeout": CONNECT_TIMEOUT_SECONDS, "async_creator_fn": _connect},
    )


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
