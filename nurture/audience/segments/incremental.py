"""Incremental segment sweeps: re-check only the contacts whose membership may have changed.

A full sweep compares every contact with a watched segment's filter: over 1,000,000 contacts
that is seconds to minutes of Postgres per segment, every few minutes. Between two sweeps,
though, a contact's membership can only change if

1. the contact changed: every change goes through the change path and leaves a
   `contact_changes` row (fields, tags, lists, consent, suppressions, custom events), and opens
   and clicks leave an `events` row; or
2. time moved one of the filter's windows past it: "within the last N days" of a date field or
   of events. Only the contacts whose date (or event) lies in the slice of time the window moved
   over since the last sweep can have crossed its edge: for `within_last_days N` the values
   between `last - N days` and `now - N days` (leaving) and between `last` and `now` (future
   dates that became past); for `within_next_days N`, between `last` and `now` and between
   `last + N days` and `now + N days`.

So a sweep re-checks the union of those contacts (`changed_since` + `crossing`), with the same
compiled filter as a full sweep. It falls back to a full sweep when it cannot know what moved:
the first sweep of a segment, an edited filter (its digest changed), a filter over enrollments
or goals (`enrolled_in`, `met_goal`: enrollments are not contact changes), and once every
`FULL_SWEEP_EVERY` as a safety net for anything written behind the change path's back.

`OVERLAP` re-reads the changes of the last minutes before the previous sweep: a change is
recorded with its transaction's time, and a transaction still open when the last sweep ran
commits later with an earlier time.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from nurture.audience.segments.compiler import compile_filter
from nurture.audience.segments.definition import (
    AllFilter,
    AnyFilter,
    ClickedFilter,
    EnrolledFilter,
    EventFilter,
    FieldFilter,
    Filter,
    MetGoalFilter,
    NotFilter,
    OpenedFilter,
)
from nurture.audience.segments.service import condition, parse_filter
from nurture.db.models import (
    Contact,
    ContactChangeRecord,
    Event,
    Segment,
    SegmentMember,
    SegmentSweep,
)

OVERLAP = timedelta(minutes=5)
FULL_SWEEP_EVERY = timedelta(hours=24)
MAX_CANDIDATES = 100_000

FullCompare = Callable[[AsyncSession, Segment], Awaitable[tuple[int, int]]]


def filter_digest(segment: Segment) -> str:
    return hashlib.sha256(json.dumps(segment.filter, sort_keys=True).encode()).hexdigest()


async def compare(
    session: AsyncSession, segment: Segment, full: FullCompare
) -> tuple[int, int, bool]:
    """Bring the segment's member rows up to date (entered, left), incrementally when the
    last sweep allows it; whether this was a full sweep. In the caller's transaction."""
    now = await session.scalar(select(sa.func.now()))
    assert now is not None
    digest = filter_digest(segment)
    last = await session.get(SegmentSweep, segment.id)
    windows = crossing(parse_filter(segment.filter), last.swept_at, now) if last else None
    if (
        last is None
        or windows is None
        or last.filter_digest != digest
        or now - last.full_swept_at >= FULL_SWEEP_EVERY
    ):
        entered, left = await full(session, segment)
        await _remember(session, segment, now, now, digest)
        return entered, left, True
    # Read first, then re-checked by primary key: handed a subquery, the planner evaluated the
    # filter over every contact before joining (slower than a full sweep at 1,000,000).
    candidates = list(
        await session.scalars(sa.union(*changed_since(last.swept_at - OVERLAP), *windows))
    )
    if len(candidates) > MAX_CANDIDATES:  # most of the audience moved: a full sweep is cheaper
        entered, left = await full(session, segment)
        await _remember(session, segment, now, now, digest)
        return entered, left, True
    entered, left = await _compare_among(session, segment, candidates)
    await _remember(session, segment, now, last.full_swept_at, digest)
    return entered, left, False


async def forget(session: AsyncSession, segment: Segment) -> None:
    """The segment is no longer watched: its next watch starts with a full sweep."""
    await session.execute(sa.delete(SegmentSweep).where(col(SegmentSweep.segment_id) == segment.id))


def changed_since(since: datetime) -> list[sa.Select[Any]]:
    """Contacts changed since `since`: recorded changes, and opens and clicks received."""
    return [
        sa.select(col(ContactChangeRecord.contact_id)).where(col(ContactChangeRecord.at) >= since),
        sa.select(col(Event.contact_id)).where(
            col(Event.received_at) >= since, col(Event.contact_id).is_not(None)
        ),
    ]


def crossing(filter: Filter, last: datetime, now: datetime) -> list[sa.Select[Any]] | None:
    """Selects of the contacts a time window of the filter may have moved in or out of between
    `last` and `now`; None when the filter looks at what the change path does not record."""
    selects: list[sa.Select[Any]] = []
    if not _collect(filter, last, now, selects):
        return None
    return selects


def _collect(f: Filter, last: datetime, now: datetime, out: list[sa.Select[Any]]) -> bool:
    match f:
        case AllFilter() | AnyFilter():
            return all(_collect(c, last, now, out) for c in f.conditions)
        case NotFilter():
            return _collect(f.condition, last, now, out)
        case EnrolledFilter() | MetGoalFilter():
            return False
        case FieldFilter(op="within_last_days" | "within_next_days"):
            days = timedelta(days=int(f.value))  # type: ignore[arg-type]
            if f.op == "within_last_days":
                slices = [(last - days, now - days), (last, now)]
            else:
                slices = [(last, now), (last + days, now + days)]
            between = [
                AllFilter(
                    type="all",
                    conditions=[
                        FieldFilter(type="field", field=f.field, op="gte", value=low.isoformat()),
                        FieldFilter(type="field", field=f.field, op="lte", value=high.isoformat()),
                    ],
                )
                for low, high in slices
            ]
            moved = compile_filter(AnyFilter(type="any", conditions=list(between)))
            out.append(sa.select(col(Contact.id)).where(moved))
        case EventFilter() | OpenedFilter() | ClickedFilter() if f.within_days is not None:
            days = timedelta(days=f.within_days)
            query = sa.select(col(Event.contact_id)).where(
                sa.or_(
                    col(Event.occurred_at).between(last - days, now - days),
                    col(Event.occurred_at).between(last, now),
                ),
                col(Event.contact_id).is_not(None),
            )
            if isinstance(f, EventFilter):
                query = query.where(col(Event.kind) == "custom", col(Event.name) == f.name)
            else:
                kinds = ["open", "click"] if isinstance(f, OpenedFilter) else ["click"]
                query = query.where(col(Event.kind).in_(kinds))
            out.append(query)
    return True


async def _compare_among(
    session: AsyncSession, segment: Segment, contact_ids: list[uuid.UUID]
) -> tuple[int, int]:
    """The full sweep's two statements, restricted to the candidate contacts (one array
    parameter, looked up by primary key)."""
    if not contact_ids:
        return 0, 0
    wanted = sa.select(sa.func.unnest(sa.literal(contact_ids, ARRAY(sa.Uuid()))))
    entered = await session.execute(
        insert(SegmentMember)
        .from_select(
            ["segment_id", "contact_id", "entered_at", "admitted_at"],
            select(
                sa.literal(segment.id, sa.Uuid()), col(Contact.id), sa.func.now(), sa.null()
            ).where(col(Contact.id).in_(wanted), condition(segment)),
        )
        .on_conflict_do_nothing()
    )
    still_member = (
        select(col(Contact.id))
        .where(col(Contact.id) == col(SegmentMember.contact_id), condition(segment))
        .exists()
    )
    left = await session.execute(
        sa.delete(SegmentMember).where(
            col(SegmentMember.segment_id) == segment.id,
            col(SegmentMember.contact_id).in_(wanted),
            sa.not_(still_member),
        )
    )
    return (
        int(getattr(entered, "rowcount", 0) or 0),
        int(getattr(left, "rowcount", 0) or 0),
    )


async def _remember(
    session: AsyncSession, segment: Segment, swept_at: datetime, full_at: datetime, digest: str
) -> None:
    values = {"swept_at": swept_at, "full_swept_at": full_at, "filter_digest": digest}
    await session.execute(
        insert(SegmentSweep)
        .values(segment_id=segment.id, **values)
        .on_conflict_do_update(index_elements=["segment_id"], set_=values)
    )
