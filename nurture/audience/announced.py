"""Marking announced changes, many in one statement.

Every announced change ends with one UPDATE of its `contact_changes` row. When a provider posts
events as fast as we answer, dozens of announcements finish at once in one process, and each
sent its own statement: a round trip and a commit per event, for a flag. Here they share one
(group commit): while one UPDATE is on its way, the marks that arrive wait, then go together in
the next. A mark that arrives alone is written at once, as before, so nothing waits on a timer.

The caller still waits for its mark to commit, so an announcement that returned is marked; a
failure reaches every caller of that statement, and the relay announces those rows again once
their lease runs out, which is harmless (see `nurture.audience.changes`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from nurture.db.engine import SessionFactory
from nurture.db.lean import driver_connection

# One array parameter whatever the number of ids: one prepared statement, not one per length.
# Also what `nurture.audience.changes.mark_announced` writes for an import's changes.
MARK_ANNOUNCED = sa.text(
    "UPDATE contact_changes SET announced_at = now(), lease_until = NULL WHERE id = ANY(:ids)"
).bindparams(sa.bindparam("ids", type_=ARRAY(sa.BigInteger())))
_MARK_ON_DRIVER = (  # the same, on the driver connection (`nurture.db.lean.driver`)
    "UPDATE contact_changes SET announced_at = now(), lease_until = NULL WHERE id = ANY($1::bigint[])"
)
_MOST_AT_ONCE = 1_000


class _Marks:
    """The marks waiting in one process for one database."""

    def __init__(self, sessions: SessionFactory, loop: asyncio.AbstractEventLoop) -> None:
        self._sessions = sessions
        self.loop = loop
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def mark(self, change_ids: Sequence[int]) -> None:
        done = [self.loop.create_future() for _ in change_ids]
        self._waiting += zip(change_ids, done, strict=True)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="announced-marks")
        for future in done:
            await future

    async def _write(self) -> None:
        while self._waiting:
            batch = self._waiting[:_MOST_AT_ONCE]
            del self._waiting[:_MOST_AT_ONCE]
            try:
                async with driver_connection(self._sessions) as connection:
                    await connection.execute(_MARK_ON_DRIVER, [change_id for change_id, _ in batch])
            except Exception as err:
                _settle(batch, err)
            except BaseException as err:  # cancelled with the loop: nobody is left to write
                _settle(batch + self._waiting, err)
                self._waiting.clear()
                raise
            else:
                _settle(batch, None)


def _settle(batch: Sequence[tuple[int, asyncio.Future[None]]], err: BaseException | None) -> None:
    for _, future in batch:
        if future.done():  # its caller was cancelled meanwhile
            continue
        if err is None:
            future.set_result(None)
        else:
            future.set_exception(err)


_BY_FACTORY: weakref.WeakKeyDictionary[SessionFactory, _Marks] = weakref.WeakKeyDictionary()


async def mark_announced_together(sessions: SessionFactory, change_ids: Sequence[int]) -> None:
    """Mark these changes announced, in one statement with those other announcements of this
    process are marking at the same time; returns once the mark has committed."""
    if not change_ids:
        return
    loop = asyncio.get_running_loop()
    marks = _BY_FACTORY.get(sessions)
    if marks is None or marks.loop is not loop:  # tests run one event loop each
        marks = _BY_FACTORY[sessions] = _Marks(sessions, loop)
    await marks.mark(change_ids)
