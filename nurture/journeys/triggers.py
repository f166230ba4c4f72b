"""Journeys that start by themselves: which live journeys a trigger starts, and segment
entries admitted into the journeys that start on them.

A contact's changes reach them through `nurture.audience.changes` (list joined, event
performed, segment entered), after the change has committed; opens and clicks re-check
segments here too (`on_contact_changed`). A contact that a journey refuses (re-entry not
allowed, already in it) is not enrolled again, and its timeline says why; the rest go on.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.service import RPCError

from nurture.audience.segments.membership import Entry, observe
from nurture.concurrency import gather_limited
from nurture.db.engine import SessionFactory
from nurture.db.models import Enrollment, Journey, JourneyStatus, SegmentMember
from nurture.errors import Conflict, NotFound
from nurture.journeys.enrollments import EnrollmentOptions, enroll

logger = logging.getLogger(__name__)

_LIVE = (JourneyStatus.ACTIVE, JourneyStatus.PAUSED)
_ADMIT_CONCURRENCY = 20


async def on_contact_changed(
    sessions: SessionFactory, client: Client, options: EnrollmentOptions, contact_id: uuid.UUID
) -> list[Enrollment]:
    """Enroll the contact in the live journeys that start on entering a segment it just entered.

    Checked right after each change, so a contact enters within moments of qualifying; a
    contact that was already in the segment has not entered it (`nurture.audience.segments.membership`).
    """
    entries = await observe(sessions, contact_id)
    return (await admit(sessions, client, options, entries)).enrollments if entries else []


async def live_journeys(
    session: AsyncSession, trigger_type: str, trigger_key: str
) -> list[Journey]:
    """The active or paused journeys this trigger starts (`list_joined` of a list, ...)."""
    rows = await session.scalars(
        select(Journey)
        .where(
            col(Journey.trigger_type) == trigger_type,
            col(Journey.trigger_key) == trigger_key,
            col(Journey.status).in_(_LIVE),
        )
        .order_by(col(Journey.key))
    )
    return list(rows)


@dataclass
class Admitted:
    enrollments: list[Enrollment] = field(default_factory=list)
    admitted: int = 0
    deferred: int = 0  # left unadmitted: their enrollment could not reach Temporal


async def admit(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    entries: Sequence[Entry],
) -> Admitted:
    """Enroll each segment entry in its journeys, then mark it admitted.

    A journey that refuses (re-entry rules, exclusion) is an answer too. An entry whose
    enrollment could not reach Temporal stays unadmitted for the next sweep."""
    result = Admitted()

    async def one(entry: Entry) -> None:
        try:
            result.enrollments.extend(await _admit(sessions, client, options, entry))
            result.admitted += 1
        except (RPCError, RuntimeError, TimeoutError) as err:
            result.deferred += 1
            logger.warning(
                "entry of %s into segment %s left for the next sweep: %s",
                entry.contact_id,
                entry.segment_id,
                err,
            )

    await gather_limited(_ADMIT_CONCURRENCY, one, entries)
    return result


async def _admit(
    sessions: SessionFactory, client: Client, options: EnrollmentOptions, entry: Entry
) -> list[Enrollment]:
    started = []
    for journey_key in entry.journey_keys:
        if await _enrolled_since(sessions, journey_key, entry):
            continue  # this entry was given to the journey before a crash
        try:
            started.append(
                await enroll(
                    sessions,
                    client,
                    options,
                    journey_key,
                    entry.contact_id,
                    cause=f"segment_entered:{entry.segment_key}",
                )
            )
        except (Conflict, NotFound) as refused:  # refused, or the journey is gone
            logger.info("not enrolling %s in %s: %s", entry.contact_id, journey_key, refused)
    async with sessions.begin() as session:
        await session.execute(
            sa.update(SegmentMember)
            .where(
                col(SegmentMember.segment_id) == entry.segment_id,
                col(SegmentMember.contact_id) == entry.contact_id,
                col(SegmentMember.entered_at) == entry.entered_at,
            )
            .values(admitted_at=sa.func.now())
        )
    return started


async def _enrolled_since(sessions: SessionFactory, journey_key: str, entry: Entry) -> bool:
    async with sessions() as session:
        found = await session.scalar(
            select(col(Enrollment.id))
            .join(Journey, col(Journey.id) == col(Enrollment.journey_id))
            .where(
                col(Journey.key) == journey_key,
                col(Enrollment.contact_id) == entry.contact_id,
                col(Enrollment.enrolled_at) >= entry.entered_at,
            )
            .limit(1)
        )
    return found is not None
