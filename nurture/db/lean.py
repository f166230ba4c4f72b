"""Sessions without BEGIN/COMMIT, for request paths that make one statement at a time.

A session of `autocommit(sessions)` shares the pool of `sessions` but runs each statement in a
transaction of its own (asyncpg's autocommit mode sends no BEGIN, COMMIT or ROLLBACK): a read, or
a write that is one statement (a CTE inserting several rows is atomic by itself), costs one round
trip instead of three. Use it only where no two statements must commit together.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

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
