"""Exclusion segments (HubSpot's suppression lists): contacts in a journey's exclusion segment
never enter it, and a contact who joins that segment later gets no more sends from it."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from nurture.audience.segments.service import contains
from nurture.db.models import Segment


class MissingExclusionSegment(Exception):
    """The journey names an exclusion segment that does not exist (deleted after publishing).

    Treated as "excluded": sending to people a marketer meant to keep out is the worse mistake."""


async def in_exclusion_segment(
    session: AsyncSession, segment_key: str, contact_id: uuid.UUID
) -> bool:
    segment = await session.scalar(select(Segment).where(col(Segment.key) == segment_key))
    if segment is None:
        raise MissingExclusionSegment(f"exclusion segment {segment_key!r} does not exist")
    return await contains(session, segment, contact_id)
