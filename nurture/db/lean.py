"""Sessions without BEGIN/COMMIT, for request paths that make one statement at a time.

A session of `autocommit(sessions)` shares the pool of `sessions` but runs each statement in a
transaction of its own (asyncpg's autocommit mode sends no BEGIN, COMMIT or ROLLBACK): a read, or
a write that is one statement (a CTE inserting several rows is atomic by itself), costs one round
trip instead of three. Use it only where no two statements must commit together.

`driver_connection(sessions)` goes one step further for the hottest statements: asyncpg's own
connection from the same pool, without SQLAlchemy in between.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.util import greenlet_spawn

from nurture.db.engine import SessionFactory, database_away

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


@asynccontextmanager
async def driver_connection(sessions: SessionFactory) -> AsyncIterator[Any]:
    """A pooled connection of `sessions`' engine as asyncpg's own connection, for the hottest
    statements of the request paths; handed back to the pool on exit.

    A statement sent here skips SQLAlchemy's session, compile, parameter and result layers,
    which cost the API several times the statement itself (docs/benchmarks.md). Every statement
    commits by itself (no BEGIN is sent: use it where no two statements must commit together);
    asyncpg keeps it prepared per connection. Parameters are positional ($1, $2...); JSON and
    JSONB go in as JSON text and come back parsed (the codecs SQLAlchemy set on the
    connection); errors are asyncpg's own (`asyncpg.UniqueViolationError`...), which
    `database_away` also recognises. A connection that failed other than with an error
    Postgres answered (cut, cancelled mid-statement) is discarded, not pooled again."""
    engine = sessions.kw["bind"]
    assert isinstance(engine, AsyncEngine)
    pooled = await engine.raw_connection()
    try:
        yield pooled.driver_connection
    except BaseException as err:
        if database_away(err) or not isinstance(err, asyncpg.PostgresError):
            pooled.invalidate(err if isinstance(err, Exception) else None)
        raise
    finally:
        await greenlet_spawn(pooled.close)
