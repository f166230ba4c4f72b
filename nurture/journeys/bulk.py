"""Starting a bulk enrollment: the progress row first, committed, then the workflow."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from nurture.audience.segments.service import count
from nurture.contracts import BULK_ENROLL_WORKFLOW, BulkEnrollInput
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    BulkEnrollment,
    ContactList,
    Journey,
    JourneyStatus,
    ListMembership,
    Segment,
)
from nurture.errors import Conflict, NotFound


@dataclass(frozen=True)
class Audience:
    """A bulk enrollment's list or segment, and how many contacts it holds now."""

    list_id: uuid.UUID | None
    segment_id: uuid.UUID | None
    total: int
    label: str


async def resolve_audience(
    session: AsyncSession,
    list_key: str | None,
    segment_key: str | None,
    joined_since: datetime | None = None,
) -> Audience:
    """The list (or segment) with this key; NotFound when there is none."""
    if segment_key is not None:
        segment = await session.scalar(select(Segment).where(col(Segment.key) == segment_key))
        if segment is None:
            raise NotFound(f"no segment {segment_key!r}")
        return Audience(None, segment.id, await count(session, segment), f"segment {segment_key}")
    contact_list = await session.scalar(select(ContactList).where(col(ContactList.key) == list_key))
    if contact_list is None:
        raise NotFound(f"no list {list_key!r}")
    members = select(func.count()).where(col(ListMembership.list_id) == contact_list.id)
    if joined_since is not None:
        members = members.where(col(ListMembership.added_at) >= joined_since)
    total = await session.scalar(members)
    return Audience(contact_list.id, None, total or 0, f"list {list_key}")


async def start_bulk_enrollment(
    sessions: SessionFactory,
    client: Client,
    task_queue: str,
    journey_key: str,
    list_key: str | None = None,
    page_size: int = 200,
    *,
    segment_key: str | None = None,
    workflow_id: str | None = None,
    start_delay: timedelta | None = None,
    joined_since: datetime | None = None,
    readmit: bool = False,
) -> BulkEnrollment:
    """Enroll a list's or a segment's members. With `workflow_id`, a second call with the same
    id starts nothing new (a one-time segment journey published again runs once)."""
    if (list_key is None) == (segment_key is None):
        raise ValueError("give exactly one of list_key, segment_key")
    async with sessions.begin() as session:
        journey = await session.scalar(select(Journey).where(col(Journey.key) == journey_key))
        if journey is None:
            raise NotFound(f"no journey {journey_key!r}")
        if journey.status not in (JourneyStatus.ACTIVE, JourneyStatus.PAUSED):
            raise Conflict(f"journey {journey_key!r} is {journey.status}: nobody can enter it")
        if workflow_id is not None:
            existing = await session.scalar(
                select(BulkEnrollment).where(col(BulkEnrollment.workflow_id) == workflow_id)
            )
            if existing is not None:
                return existing
        bulk_id = uuid.uuid4()
        audience = await resolve_audience(session, list_key, segment_key, joined_since)
        bulk = BulkEnrollment(
            id=bulk_id,
            journey_id=journey.id,
            list_id=audience.list_id,
            segment_id=audience.segment_id,
            workflow_id=workflow_id
            or f"bulk-enroll:{journey_key}:{list_key or segment_key}:{bulk_id}",
            total=audience.total,
        )
        session.add(bulk)
    await client.start_workflow(
        BULK_ENROLL_WORKFLOW,
        BulkEnrollInput(
            bulk_id=bulk.id,
            journey_key=journey_key,
            list_key=list_key,
            segment_key=segment_key,
            joined_since=joined_since,
            page_size=page_size,
            readmit=readmit,
        ),
        id=bulk.workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        start_delay=start_delay,
        static_summary=f"enroll {audience.label} into journey {journey_key}",
    )
    return bulk
