"""Statements shared by concurrent callers (`nurture.db.together`), and the enrollment's pause
catch-up read that uses it: callers asking at once share a statement, a caller asking while a
statement is on its way gets the next one (so a read sees what committed before the ask), and a
failure reaches every caller of its statement."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from nurture.db.engine import SessionFactory
from nurture.db.together import ask_together
from nurture.journeys.enrollments import _journey_statuses
from tests.support import log_driver_statements, publish_journey

JOURNEY = {
    "key": "together",
    "name": "Together",
    "start": "ping",
    "steps": {
        "ping": {
            "type": "wait_for",
            "event": {"type": "custom", "name": "together-ping"},
            "timeout": "1d",
        }
    },
}


async def test_a_key_asked_during_a_statement_goes_in_the_next(sessions: SessionFactory) -> None:
    batches: list[list[str]] = []
    first_may_finish = asyncio.Event()

    async def run(_sessions: SessionFactory, keys: list[str]) -> dict[str, str]:
        batches.append(keys)
        if len(batches) == 1:
            await first_may_finish.wait()
        return {key: f"{key}@{len(batches)}" for key in keys}

    first = asyncio.create_task(ask_together(sessions, run, ["a"]))
    await asyncio.sleep(0.01)  # the first statement is on its way
    later = [asyncio.create_task(ask_together(sessions, run, [key])) for key in ("b", "c", "b")]
    await asyncio.sleep(0.01)
    assert batches == [["a"]]  # nobody joined a statement that had started before they asked
    first_may_finish.set()

    assert await first == ["a@1"]
    assert [await task for task in later] == [["b@2"], ["c@2"], ["b@2"]]
    assert batches == [["a"], ["b", "c"]]  # the waiting keys together, each once


async def test_a_failure_reaches_every_caller_of_its_statement(sessions: SessionFactory) -> None:
    async def run(_sessions: SessionFactory, keys: list[int]) -> dict[int, int]:
        await asyncio.sleep(0.01)
        raise RuntimeError(f"nothing for {keys}")

    outcomes = await asyncio.gather(
        *(ask_together(sessions, run, [n]) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes), outcomes


async def test_concurrent_catch_up_reads_share_a_statement_and_see_a_pause(
    sessions: SessionFactory, engine: AsyncEngine
) -> None:
    await publish_journey(sessions, JOURNEY)
    async with sessions.begin() as session:
        journey_id = (
            await session.execute(text("SELECT id FROM journeys WHERE key = 'together'"))
        ).scalar_one()
    sent: list[str] = []
    stop = log_driver_statements(engine, lambda statement: sent.append(statement))
    try:
        statuses = await asyncio.gather(
            *(ask_together(sessions, _journey_statuses, [journey_id]) for _ in range(30))
        )
        await asyncio.sleep(0.05)  # asyncpg calls its query loggers soon after
        reads = [s for s in sent if s.startswith("SELECT id, status FROM journeys")]
        async with sessions.begin() as session:
            await session.execute(
                text("UPDATE journeys SET status = 'paused' WHERE key = 'together'")
            )
        after_pause = await ask_together(sessions, _journey_statuses, [journey_id])
        unknown = await ask_together(sessions, _journey_statuses, [uuid.uuid4()])
    finally:
        stop()

    assert statuses == [["active"]] * 30
    assert 1 <= len(reads) <= 2, reads  # the first at once, the rest together
    assert after_pause == ["paused"]
    assert unknown == [None]


async def test_no_keys_make_no_statement(sessions: SessionFactory) -> None:
    async def run(_sessions: SessionFactory, asked: list[int]) -> dict[int, int]:
        raise AssertionError("no statement for no keys")

    assert await ask_together(sessions, run, []) == []
