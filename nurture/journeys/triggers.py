"""Journeys that start by themselves: when a contact joins a list, performs an event, or
enters a segment through a change (created, updated, joined a list, performed an event,
opened or clicked).

Called after the change that triggers them has committed. A contact that a journey refuses
(re-entry not allowed, already in it) is simply not enrolled again; the rest go on.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
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
from nurture.journeys.definition import EventTrigger
from nurture.journeys.enrollments import EnrollmentOptions, enroll, parsed_definition
from nurture.journeys.publishing import latest_version

logger = logging.getLogger(__name__)

_LIVE = (JourneyStatus.ACTIVE, JourneyStatus.PAUSED)
_ADMIT_CONCURRENCY = 20


async def on_list_joined(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    contact_id: uuid.UUID,
    list_key: str,
) -> list[Enrollment]:
    return await _start_triggered(
        sessions, client, options, contact_id, "list_joined", list_key, properties=None
    )


async def on_event(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    contact_id: uuid.UUID,
    name: str,
    properties: Mapping[str, object],
) -> list[Enrollment]:
    return await _start_triggered(
        sessions, client, options, contact_id, "event", name, properties=properties
    )


async def on_contact_changed(
    sessions: SessionFactory, client: Client, options: EnrollmentOptions, contact_id: uuid.UUID
) -> list[Enrollment]:
    """Enroll the contact in the live journeys that start on entering a segment it just entered.

    Checked right after each change, so a contact enters within moments of qualifying; a
    contact that was already in the segment has not entered it (`nurture.audience.segments.membership`).
    """
    entries = await observe(sessions, contact_id)
    return (await admit(sessions, client, options, entries)).enrollments if entries else []


async def _enroll_each(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    contact_id: uuid.UUID,
    journey_keys: list[str],
) -> list[Enrollment]:
    started = []
    for journey_key in journey_keys:
        try:
            started.append(await enroll(sessions, client, options, journey_key, contact_id))
        except Conflict as refused:
            logger.info("not enrolling %s in %s: %s", contact_id, journey_key, refused.message)
    return started


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


async def _start_triggered(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    contact_id: uuid.UUID,
    trigger_type: str,
    trigger_key: str,
    properties: Mapping[str, object] | None,
) -> list[Enrollment]:
    async with sessions() as session:
        journeys = await live_journeys(session, trigger_type, trigger_key)
        candidates = []
        for journey in journeys:
            version = await latest_version(session, journey)
            if version is None:
                continue
            trigger = parsed_definition(version).trigger
            if (
                isinstance(trigger, EventTrigger)
                and properties is not None
                and any(properties.get(k) != v for k, v in trigger.where.items())
            ):
                continue
            candidates.append(journey.key)
    return await _enroll_each(sessions, client, options, contact_id, candidates)


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
            started.append(await enroll(sessions, client, options, journey_key, entry.contact_id))
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
