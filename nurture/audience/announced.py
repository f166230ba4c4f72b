"""Marking announced changes, many in one statement.

Every announced change ends with one UPDATE of its `contact_changes` row. When a provider posts
events as fast as we answer, dozens of announcements finish at once in one process, and each
sent its own statement: a round trip and a commit per event, for a flag. Here they share one
(group commit, `nurture.db.together`): while one UPDATE is on its way, the marks that arrive
wait, then go together in the next. A mark that arrives alone is written at once, as before, so
nothing waits on a timer.

The caller still waits for its mark to commit, so an announcement that returned is marked; a
failure reaches every caller of that statement, and the relay announces those rows again once
their lease runs out, which is harmless (see `nurture.audience.changes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nurture.db.engine import SessionFactory
from nurture.db.lean import driver_connection
from nurture.db.together import ask_together

# One array parameter whatever the number of ids: one prepared statement, not one per length.
# Sent on the driver connection (`nurture.db.lean.driver_connection`); also what
# `nurture.audience.changes.mark_announced` writes for an import's changes.
MARK_ANNOUNCED = (
    "UPDATE contact_changes SET announced_at = now(), lease_until = NULL"
    " WHERE id = ANY($1::bigint[])"
)


async def _mark(sessions: SessionFactory, change_ids: list[int]) -> Mapping[int, None]:
    async with driver_connection(sessions) as connection:
        await connection.execute(MARK_ANNOUNCED, change_ids)
    return {}


async def mark_announced_together(sessions: SessionFactory, change_ids: Sequence[int]) -> None:
    """Mark these changes announced, in one statement with those other announcements of this
    process are marking at the same time; returns once the mark has committed."""
    await ask_together(sessions, _mark, change_ids)
