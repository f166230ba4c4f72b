"""Journeys that start by themselves: when a contact joins a list, performs an event, or is
found in a segment after a change (created, updated, joined a list, performed an event).

Called after the change that triggers them has committed. A contact that a journey refuses
(re-entry not allowed, already in it) is simply not enrolled again; the rest go on.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from temporalio.client import Client

from nurture.db.engine import SessionFactory
from nurture.db.models import Enrollment, Journey, JourneyStatus, Segment
from nurture.enrollments import EnrollmentOptions, enroll
from nurture.errors import Conflict
from nurture.journeys.definition import EventTrigger, JourneyDefinition, SegmentTrigger
from nurture.journeys.publishing import latest_version
from nurture.segments.service import contains

logger = logging.getLogger(__name__)

_LIVE = (JourneyStatus.ACTIVE, JourneyStatus.PAUSED)


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
    """Enroll the contact in the live journeys triggered by a segment it is in now.

    Checked right after each change, so a contact enters within moments of qualifying. The
    journey's re-entry rules decide whether a contact still in the segment enters again: with
    the default (never), each contact enters once."""
    async with sessions() as session:
        journeys = list(
            await session.scalars(
                select(Journey).where(
                    col(Journey.trigger_type).in_(("segment_entered", "segment")),
                    col(Journey.status).in_(_LIVE),
                )
            )
        )
        candidates = []
        for journey in journeys:
            if journey.trigger_type == "segment" and not await _takes_newcomers(session, journey):
                continue  # a one-time or recurring audience: enrolled by its runs only
            segment = await session.scalar(
                select(Segment).where(col(Segment.key) == journey.trigger_key)
            )
            if segment is None:
                logger.warning("journey %s is triggered by a missing segment", journey.key)
                continue
            if await contains(session, segment, contact_id):
                candidates.append(journey.key)
    return await _enroll_each(sessions, client, options, contact_id, candidates)


async def _takes_newcomers(session: AsyncSession, journey: Journey) -> bool:
    version = await latest_version(session, journey)
    if version is None:
        return False
    trigger = JourneyDefinition.model_validate(version.definition).trigger
    return isinstance(trigger, SegmentTrigger) and trigger.mode == "once_and_new"


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
        journeys = list(
            await session.scalars(
                select(Journey).where(
                    col(Journey.trigger_type) == trigger_type,
                    col(Journey.trigger_key) == trigger_key,
                    col(Journey.status).in_(_LIVE),
                )
            )
        )
        candidates = []
        for journey in journeys:
            version = await latest_version(session, journey)
            if version is None:
                continue
            trigger = JourneyDefinition.model_validate(version.definition).trigger
            if (
                isinstance(trigger, EventTrigger)
                and properties is not None
                and any(properties.get(k) != v for k, v in trigger.where.items())
            ):
                continue
            candidates.append(journey.key)
    return await _enroll_each(sessions, client, options, contact_id, candidates)
