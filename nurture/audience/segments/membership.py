"""Who is in a watched segment, so that "entered the segment" is a change from out to in.

A segment is *watched* while a live journey starts when contacts enter it (a
`segment_entered` trigger, or a `segment` trigger in `once_and_new` mode). Watching starts with
a snapshot of the members at that moment: they are already in, so they do not "enter". From
then on `segment_members` holds the members as last seen, and a contact enters when it is found
in the segment without a row:

- `observe` re-checks one contact right after it changed (contact saved, list joined, event,
  open or click), so an entry is seen within moments;
- `sweep` compares every watched segment with its rows in one statement each, which catches
  what no single change announces: time passing ("no purchase in the last 30 days"), an edited
  filter, a CSV import. The SegmentWatch workflow runs it every few minutes.

A contact who leaves loses its row, so coming back later is a new entry (the journey's re-entry
rules still decide whether it enrolls again). Entries are written with `admitted_at` NULL and
admitted once their journeys have been given them (`admit`); a crash in between leaves the row
for the next sweep, and `admit` skips a journey that already enrolled the contact since it
entered, so a retried entry never enrolls twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from nurture.audience.segments import incremental
from nurture.audience.segments.service import condition, contains
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    Contact,
    Journey,
    JourneyStatus,
    JourneyVersion,
    Segment,
    SegmentMember,
)
from nurture.journeys.definition import (
    JourneyDefinition,
    SegmentEnteredTrigger,
    SegmentTrigger,
)

_LIVE = (JourneyStatus.ACTIVE, JourneyStatus.PAUSED)
ADMIT_BATCH = 500


@dataclass(frozen=True)
class Entry:
    """A contact found in a watched segment it was not in, and the journeys that start on it."""

    segment_id: uuid.UUID
    contact_id: uuid.UUID
    entered_at: datetime
    journey_keys: tuple[str, ...]
    segment_key: str = ""


@dataclass
class SweepReport:
    segments: int = 0
    entered: int = 0
    left: int = 0
    full: int = 0  # segments compared in full (the others: incrementally)


async def entering_journeys(session: AsyncSession) -> dict[str, tuple[str, ...]]:
    """Segment key -> the live journeys that start when a contact enters it."""
    journeys = await session.scalars(
        select(Journey)
        .where(
            col(Journey.trigger_type).in_(("segment_entered", "segment")),
            col(Journey.status).in_(_LIVE),
        )
        .order_by(col(Journey.key))
    )
    found: dict[str, list[str]] = {}
    for journey in journeys:
        if journey.trigger_key is None:
            continue
        if journey.trigger_type == "segment" and not await _takes_newcomers(session, journey):
            continue  # one-time or recurring audiences are enrolled by their runs only
        found.setdefault(journey.trigger_key, []).append(journey.key)
    return {key: tuple(keys) for key, keys in found.items()}


def starts_on_entry(definition: JourneyDefinition) -> str | None:
    """The segment whose entries start this journey, if any."""
    trigger = definition.trigger
    if isinstance(trigger, SegmentEnteredTrigger):
        return trigger.segment
    if isinstance(trigger, SegmentTrigger) and trigger.mode == "once_and_new":
        return trigger.segment
    return None


async def _takes_newcomers(session: AsyncSession, journey: Journey) -> bool:
    definition = await session.scalar(
        select(JourneyVersion.definition)
        .where(col(JourneyVersion.journey_id) == journey.id)
        .order_by(col(JourneyVersion.version).desc())
        .limit(1)
    )
    if definition is None:
        return False
    return starts_on_entry(JourneyDefinition.model_validate(definition)) is not None


async def watch(session: AsyncSession, segment: Segment) -> int:
    """Start watching: today's members are recorded as already in (and admitted). Returns how
    many; a segment already watched is left as it is (0)."""
    if segment.watched_since is not None:
        return 0
    added = await _add_members(session, segment, admitted=True)
    segment.watched_since = await session.scalar(select(sa.func.now()))
    session.add(segment)
    return added


async def _add_members(session: AsyncSession, segment: Segment, *, admitted: bool) -> int:
    """Give every member without a row one, entered now; how many. Not `admitted`: each is
    an entry for the segment's journeys."""
    admitted_at = sa.func.now() if admitted else sa.null()
    result = await session.execute(
        insert(SegmentMember)
        .from_select(
            ["segment_id", "contact_id", "entered_at", "admitted_at"],
            select(
                sa.literal(segment.id, sa.Uuid()), col(Contact.id), sa.func.now(), admitted_at
            ).where(condition(segment)),
        )
        .on_conflict_do_nothing()
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def watch_segment(session: AsyncSession, segment_key: str) -> int:
    """`watch` by key, in the caller's transaction (publishing a journey that starts on it)."""
    segment = await session.scalar(
        select(Segment).where(col(Segment.key) == segment_key).with_for_update()
    )
    return 0 if segment is None else await watch(session, segment)


async def _unwatch(session: AsyncSession, segment: Segment) -> None:
    await session.execute(
        sa.delete(SegmentMember).where(col(SegmentMember.segment_id) == segment.id)
    )
    segment.watched_since = None
    session.add(segment)
    await incremental.forget(session, segment)


async def observe(sessions: SessionFactory, contact_id: uuid.UUID) -> list[Entry]:
    """Re-check one contact against every watched segment; its new entries (not yet admitted).

    Two changes of the same contact racing each other both insert with ON CONFLICT DO NOTHING,
    so only one of them reports the entry."""
    entries: list[Entry] = []
    async with sessions.begin() as session:
        journeys = await entering_journeys(session)
        if not journeys:
            return entries
        segments = await session.scalars(
            select(Segment).where(
                col(Segment.key).in_(journeys), col(Segment.watched_since).is_not(None)
            )
        )
        for segment in segments:
            if await contains(session, segment, contact_id):
                entered_at = await session.scalar(
                    insert(SegmentMember)
                    .values(segment_id=segment.id, contact_id=contact_id, entered_at=sa.func.now())
                    .on_conflict_do_nothing()
                    .returning(col(SegmentMember.entered_at))
                )
                if entered_at is not None:
                    entries.append(
                        Entry(
                            segment.id, contact_id, entered_at, journeys[segment.key], segment.key
                        )
                    )
            else:
                await session.execute(
                    sa.delete(SegmentMember).where(
                        col(SegmentMember.segment_id) == segment.id,
                        col(SegmentMember.contact_id) == contact_id,
                    )
                )
    return entries


async def sweep(sessions: SessionFactory) -> SweepReport:
    """Bring every watched segment's rows up to date (one transaction per segment); start or
    stop watching as journeys were published or archived. Entries are left to `admit`."""
    report = SweepReport()
    async with sessions() as session:
        journeys = await entering_journeys(session)
        segment_ids = list(
            await session.scalars(
                select(col(Segment.id)).where(
                    sa.or_(col(Segment.key).in_(journeys), col(Segment.watched_since).is_not(None))
                )
            )
        )
    for segment_id in segment_ids:
        async with sessions.begin() as session:
            segment = await session.get(Segment, segment_id, with_for_update=True)
            if segment is None:
                continue  # deleted meanwhile
            if segment.key not in journeys:
                await _unwatch(session, segment)
            elif segment.watched_since is None:
                await watch(session, segment)
            else:
                # Only the contacts that changed or that time moved, where that is known.
                entered, left, full = await incremental.compare(session, segment, _compare)
                report.entered += entered
                report.left += left
                report.full += int(full)
            report.segments += 1
    return report


async def _compare(session: AsyncSession, segment: Segment) -> tuple[int, int]:
    """Insert the members without a row (entries), delete the rows of non-members."""
    entered = await _add_members(session, segment, admitted=False)
    still_member = (
        select(col(Contact.id))
        .where(col(Contact.id) == col(SegmentMember.contact_id), condition(segment))
        .exists()
    )
    left = await session.execute(
        sa.delete(SegmentMember).where(
            col(SegmentMember.segment_id) == segment.id, sa.not_(still_member)
        )
    )
    return entered, int(getattr(left, "rowcount", 0) or 0)


async def unadmitted(sessions: SessionFactory, limit: int = ADMIT_BATCH) -> list[Entry]:
    """Entries whose journeys have not been given them yet, oldest first."""
    async with sessions() as session:
        journeys = await entering_journeys(session)
        rows = (
            await session.execute(
                select(
                    col(SegmentMember.segment_id),
                    col(SegmentMember.contact_id),
                    col(SegmentMember.entered_at),
                    col(Segment.key),
                )
                .join(Segment, col(Segment.id) == col(SegmentMember.segment_id))
                .where(col(SegmentMember.admitted_at).is_(None))
                .order_by(col(SegmentMember.entered_at))
                .limit(limit)
            )
        ).all()
    return [
        Entry(segment_id, contact_id, entered_at, journeys.get(key, ()), key)
        for segment_id, contact_id, entered_at, key in rows
    ]
