"""Enrolling a list page by page, for the BulkEnroll workflow.

Each page enrolls its contacts through `nurture.enrollments.enroll`, which returns the live
enrollment rather than making a second one, so a page retried after a crash enrolls nobody
twice. Progress written to Postgres is absolute (cursor and counts from the workflow), so a
retry rewrites the same numbers instead of adding them again.
"""

from __future__ import annotations

import asyncio
import uuid

from sqlmodel import col, select, update
from temporalio import activity
from temporalio.client import Client

from nurture.contracts import BulkPage, BulkPageResult, BulkProgress
from nurture.db.engine import SessionFactory
from nurture.db.models import BulkEnrollment, ContactList, ListMembership, utcnow
from nurture.enrollments import EnrollmentOptions, enroll_or_get
from nurture.errors import Conflict

_CONCURRENCY = 20


class BulkActivities:
    def __init__(self, sessions: SessionFactory, client: Client, options: EnrollmentOptions):
        self._sessions = sessions
        self._client = client
        self._options = options

    @activity.defn
    async def enroll_page(self, page: BulkPage) -> BulkPageResult:
        async with self._sessions() as session:
            query = (
                select(ListMembership.contact_id)
                .join(ContactList, col(ContactList.id) == col(ListMembership.list_id))
                .where(col(ContactList.key) == page.list_key)
                .order_by(col(ListMembership.contact_id))
                .limit(page.page_size)
            )
            if page.progress.after_contact_id is not None:
                query = query.where(col(ListMembership.contact_id) > page.progress.after_contact_id)
            contact_ids = list(await session.scalars(query))

        limit = asyncio.Semaphore(_CONCURRENCY)

        async def one(contact_id: uuid.UUID) -> bool:
            async with limit:
                try:
                    _, created = await enroll_or_get(
                        self._sessions,
                        self._client,
                        self._options,
                        page.journey_key,
                        contact_id,
                    )
                except Conflict:  # refused by the journey's entry rules
                    return False
                return created

        created = await asyncio.gather(*(one(c) for c in contact_ids))
        enrolled = sum(created)
        progress = BulkProgress(
            after_contact_id=contact_ids[-1] if contact_ids else page.progress.after_contact_id,
            done=page.progress.done + len(contact_ids),
            enrolled=page.progress.enrolled + enrolled,
            skipped=page.progress.skipped + len(contact_ids) - enrolled,
        )
        finished = len(contact_ids) < page.page_size
        async with self._sessions.begin() as session:
            await session.execute(
                update(BulkEnrollment)
                .where(col(BulkEnrollment.id) == page.bulk_id)
                .values(
                    done=progress.done,
                    enrolled=progress.enrolled,
                    skipped=progress.skipped,
                    status="completed" if finished else "running",
                    finished_at=utcnow() if finished else None,
                )
            )
        return BulkPageResult(progress=progress, finished=finished)
