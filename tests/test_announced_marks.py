"""Announced marks written together (`nurture.audience.announced`): concurrent announcements
share one UPDATE, a mark alone is written at once, and a failed write reaches every caller."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import col, select

from nurture.audience.announced import mark_announced_together
from nurture.db.engine import SessionFactory, session_factory
from nurture.db.models import ContactChangeRecord
from tests.support import log_driver_statements, make_contact


@pytest.fixture
def marks_written(engine: AsyncEngine) -> Iterator[list[str]]:
    """The UPDATEs of contact_changes sent to Postgres while the test runs, through SQLAlchemy
    or on the driver connection."""
    seen: list[str] = []

    def count(statement: str) -> None:
        if statement.lstrip().upper().startswith("UPDATE CONTACT_CHANGES"):
            seen.append(statement)

    def count_cursor(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        count(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", count_cursor)
    stop = log_driver_statements(engine, count)
    yield seen
    stop()
    sa.event.remove(engine.sync_engine, "before_cursor_execute", count_cursor)


async def _changes(sessions: SessionFactory, how_many: int) -> list[int]:
    contact_id = await make_contact(sessions)
    async with sessions.begin() as session:
        ids = await session.scalars(
            sa.insert(ContactChangeRecord)
            .values(
                [
                    {"contact_id": contact_id, "source": "test", "changes": {}, "reload": True}
                    for _ in range(how_many)
                ]
            )
            .returning(col(ContactChangeRecord.id))
        )
        return [int(change_id) for change_id in ids if change_id is not None]


async def _unmarked(sessions: SessionFactory, change_ids: list[int]) -> list[int]:
    async with sessions() as session:
        rows = await session.scalars(
            select(ContactChangeRecord).where(col(ContactChangeRecord.id).in_(change_ids))
        )
        return [
            row.id
            for row in rows
            if row.id is not None and (row.announced_at is None or row.lease_until is not None)
        ]


async def test_concurrent_marks_share_a_statement(
    sessions: SessionFactory, marks_written: list[str]
) -> None:
    change_ids = await _changes(sessions, 40)

    await asyncio.gather(*(mark_announced_together(sessions, [one]) for one in change_ids))

    assert await _unmarked(sessions, change_ids) == []
    # The first mark goes at once; the ones that arrive while it is written go together.
    assert 1 <= len(marks_written) <= 2, marks_written


async def test_a_mark_alone_is_written_at_once(
    sessions: SessionFactory, marks_written: list[str]
) -> None:
    change_ids = await _changes(sessions, 3)

    for number, change_id in enumerate(change_ids, start=1):
        await mark_announced_together(sessions, [change_id])
        assert await _unmarked(sessions, [change_id]) == []
        assert len(marks_written) == number
    assert await _unmarked(sessions, change_ids) == []


async def test_a_failed_write_reaches_every_caller(sessions: SessionFactory) -> None:
    change_ids = await _changes(sessions, 5)
    nowhere = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:9/nowhere")
    try:
        down = session_factory(nowhere)
        outcomes = await asyncio.gather(
            *(mark_announced_together(down, [one]) for one in change_ids),
            return_exceptions=True,
        )
    finally:
        await nowhere.dispose()

    assert all(isinstance(outcome, OSError) for outcome in outcomes), outcomes
    assert sorted(await _unmarked(sessions, change_ids)) == sorted(change_ids)
    # The database that works is not held up by the one that failed.
    await mark_announced_together(sessions, change_ids)
    assert await _unmarked(sessions, change_ids) == []


async def test_a_cancelled_caller_does_not_stop_the_others(sessions: SessionFactory) -> None:
    change_ids = await _changes(sessions, 10)
    callers = [asyncio.create_task(mark_announced_together(sessions, [one])) for one in change_ids]
    await asyncio.sleep(0)
    callers[-1].cancel()

    outcomes = await asyncio.gather(*callers, return_exceptions=True)

    assert outcomes[:-1] == [None] * 9
    assert isinstance(outcomes[-1], asyncio.CancelledError)
    assert set(await _unmarked(sessions, change_ids)) <= {change_ids[-1]}
