"""Starting a bulk enrollment: the progress row first, committed, then the workflow."""

from __future__ import annotations

import uuid

from sqlalchemy import func
from sqlmodel import col, select
from temporalio.client import Client

from nurture.contracts import BULK_ENROLL_WORKFLOW, BulkEnrollInput
from nurture.db.engine import SessionFactory
from nurture.db.models import BulkEnrollment, ContactList, Journey, JourneyStatus, ListMembership
from nurture.errors import Conflict, NotFound


async def start_bulk_enrollment(
    sessions: SessionFactory,
    client: Client,
    task_queue: str,
    journey_key: str,
    list_key: str,
    page_size: int = 200,
) -> BulkEnrollment:
    async with sessions.begin() as session:
        journey = await session.scalar(select(Journey).where(col(Journey.key) == journey_key))
        if journey is None:
            raise NotFound(f"no journey {journey_key!r}")
        if journey.status not in (JourneyStatus.ACTIVE, JourneyStatus.PAUSED):
            raise Conflict(f"journey {journey_key!r} is {journey.status}: nobody can enter it")
        contact_list = await session.scalar(
            select(ContactList).where(col(ContactList.key) == list_key)
        )
        if contact_list is None:
            raise NotFound(f"no list {list_key!r}")
        total = await session.scalar(
            select(func.count()).where(col(ListMembership.list_id) == contact_list.id)
        )
        bulk_id = uuid.uuid4()
        bulk = BulkEnrollment(
            id=bulk_id,
            journey_id=journey.id,
            list_id=contact_list.id,
            workflow_id=f"bulk-enroll:{journey_key}:{list_key}:{bulk_id}",
            total=total or 0,
        )
        session.add(bulk)
    await client.start_workflow(
        BULK_ENROLL_WORKFLOW,
        BulkEnrollInput(
            bulk_id=bulk.id, journey_key=journey_key, list_key=list_key, page_size=page_size
        ),
        id=bulk.workflow_id,
        task_queue=task_queue,
        static_summary=f"enroll list {list_key} into journey {journey_key}",
    )
    return bulk
