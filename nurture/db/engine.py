"""The async engine and session factory, created once per process and injected."""

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


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        pool_pre_ping=True,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args={"timeout": CONNECT_TIMEOUT_SECONDS},
    )


def session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)


# What a database that is away (stopped, restarting, failing over, unreachable) raises: a
# connection that cannot be made (refused, no socket), one cut mid-request (asyncpg's
# connection errors, wrapped by SQLAlchemy or not), a pool with no connection to give in time.
_CONNECTION_ERRORS = (
    asyncpg.PostgresConnectionError,  # includes "the database system is shutting down"
    asyncpg.InterfaceError,  # "connection is closed"
    OSError,  # refused, reset, no such socket, timed out
)


def database_away(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated or isinstance(exc.orig, _CONNECTION_ERRORS)
    return isinstance(exc, _CONNECTION_ERRORS)
