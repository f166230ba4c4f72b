"""Sessions without BEGIN/COMMIT, for request paths that make one statement at a time.

A session of `autocommit(sessions)` shares the pool of `sessions` but runs each statement in a
transaction of its own (asyncpg's autocommit mode sends no BEGIN, COMMIT or ROLLBACK): a read, or
a write that is one statement (a CTE inserting several rows is atomic by itself), costs one round
trip instead of three. Use it only where no two statements must commit together.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from nurture.db.engine import SessionFactory

_AUTOCOMMIT: dict[int, tuple[AsyncEngine, SessionFactory]] = {}


def autocommit(sessions: SessionFactory) -> SessionFactory:
    """A session factory on the same pool whose sessions autocommit every statement."""
    engine = sessions.kw["bind"]
    assert isinstance(engine, AsyncEngine)
    known = _AUTOCOMMIT.get(id(engine))
    if known is not None and known[0] is engine:
        return known[1]
    factory = async_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )
    if len(_AUTOCOMMIT) > 100:  # tests make engines by the dozen; a process keeps one
        _AUTOCOMMIT.clear()
    _AUTOCOMMIT[id(engine)] = (engine, factory)
    return factory


async def driver(session: AsyncSession) -> Any:
    """The asyncpg connection under an `autocommit` session (checked out now if it has none),
    for the hottest statements of the request paths.

    A statement sent here skips SQLAlchemy's compile, parameter and result layers, which cost
    the API about as much CPU per request as the statement itself (docs/benchmarks.md); asyncpg
    keeps it prepared per connection. Parameters are positional ($1, $2...); JSON and JSONB go in
    as JSON text and come back parsed (the codecs SQLAlchemy set on the connection); errors are
    asyncpg's own (`asyncpg.UniqueViolationError`...), which `database_away` also recognises.
    Only for autocommit sessions: in a transaction SQLAlchemy opens lazily, a statement sent
    around it would commit on its own."""
    connection = await session.connection()
    options = (
        connection.sync_connection.get_execution_options() if connection.sync_connection else {}
    )
    if options.get("isolation_level") != "AUTOCOMMIT":
        raise RuntimeError("driver() is for autocommit sessions (nurture.db.lean.autocommit)")
    raw = await connection.get_raw_connection()
    return raw.driver_connection
