"""Drafts and published versions. A published version is never modified, only superseded."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nurture.db.models import Journey, JourneyStatus, JourneyVersion, utcnow
from nurture.errors import Conflict, Invalid, NotFound
from nurture.journeys.definition import JourneyDefinition
from nurture.journeys.validation import InvalidJourney, validate_journey


def _checked(data: dict[str, Any]) -> JourneyDefinition:
    try:
        return validate_journey(data)
    except InvalidJourney as err:
        raise Invalid(
            "the journey definition is invalid",
            detail=[{"path": p.path, "message": p.message} for p in err.problems],
        ) from err


async def save_draft(session: AsyncSession, data: dict[str, Any]) -> Journey:
    """Create or replace a journey's draft. Drafts may be incomplete but must parse."""
    definition = _checked(data)
    journey = await session.scalar(
        select(Journey).where(Journey.key == definition.key)  # type: ignore[arg-type]
    )
    if journey is None:
        journey = Journey(key=definition.key, name=definition.name)
        session.add(journey)
    elif journey.status == JourneyStatus.ARCHIVED:
        raise Conflict(f"journey {definition.key!r} is archived")
    journey.name = definition.name
    journey.draft = definition.model_dump(mode="json")
    journey.updated_at = utcnow()
    await session.flush()
    return journey


async def publish(session: AsyncSession, key: str) -> JourneyVersion:
    """Validate the draft and store it as the next immutable version; the journey goes active."""
    journey = await session.scalar(
        select(Journey).where(Journey.key == key).with_for_update()  # type: ignore[arg-type]
    )
    if journey is None:
        raise NotFound(f"no journey {key!r}")
    if journey.status == JourneyStatus.ARCHIVED:
        raise Conflict(f"journey {key!r} is archived")
    definition = _checked(journey.draft)
    latest = await session.scalar(
        select(func.max(JourneyVersion.version)).where(
            JourneyVersion.journey_id == journey.id  # type: ignore[arg-type]
        )
    )
    version = JourneyVersion(
        journey_id=journey.id,
        version=(latest or 0) + 1,
        definition=definition.model_dump(mode="json"),
    )
    session.add(version)
    if journey.status == JourneyStatus.DRAFT:
        journey.status = JourneyStatus.ACTIVE
    journey.updated_at = utcnow()
    await session.flush()
    return version


async def latest_version(session: AsyncSession, journey: Journey) -> JourneyVersion | None:
    return await session.scalar(
        select(JourneyVersion)
        .where(JourneyVersion.journey_id == journey.id)  # type: ignore[arg-type]
        .order_by(JourneyVersion.version.desc())  # type: ignore[attr-defined]
        .limit(1)
    )
