"""Enrolling a list or a segment page by page, for the BulkEnroll workflow.

Each page enrolls its contacts through `nurture.journeys.enrollments.enroll`, which returns the live
enrollment rather than making a second one, so a page retried after a crash enrolls nobody
twice. Progress written to Postgres is absolute (cursor and counts from the workflow), so a
retry rewrites the same numbers instead of adding them again.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from sqlalchemy import Select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select, update
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from nurture.audience.segments.service import members_query
from nurture.concurrency import gather_limited
from nurture.contracts import BulkPage, BulkPageResult, BulkProgress, BulkRun
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    BulkEnrollment,
    Contact,
    ContactList,
    Journey,
    ListMembership,
    Segment,
    utcnow,
)
from nurture.errors import Conflict, NotFound
from nurture.journeys.bulk import resolve_audience
from nurture.journeys.enrollments import EnrollmentOptions, enroll_or_get
from nurture.journeys.launch import readmittable

# Enrollments of a page started at once (claim, start_workflow, catch-up each). Measured with
# `python -m bench.broadcast --bulk-concurrency N` (docs/benchmarks.md, "Broadcasts"): the rate
# rises up to where the worker and the server are saturated; past it, starts only queue longer.
# NURTURE_BULK_CONCURRENCY overrides it, for such measurements.
_CONCURRENCY = int(os.environ.get("NURTURE_BULK_CONCURRENCY", "20"))


class BulkActivities:
    def __init__(self, sessions: SessionFactory, client: Client, options: EnrollmentOptions):
        self._sessions = sessions
        self._client = client
        self._options = options

    @activity.defn
    async def open_run(self, run: BulkRun) -> uuid.UUID:
        """The progress row of a run started by a schedule; the same row on a retry (its id
        is derived from the run's workflow id)."""
        bulk_id = uuid.uuid5(uuid.NAMESPACE_URL, f"nurture:bulk:{run.workflow_id}")
        async with self._sessions.begin() as session:
            journey_id = await session.scalar(
                select(Journey.id).where(col(Journey.key) == run.journey_key)
            )
            if journey_id is None:
                raise ApplicationError(f"no journey {run.journey_key!r}", non_retryable=True)
            try:
                audience = await resolve_audience(session, run.list_key, run.segment_key)
            except NotFound as err:  # deleted since the schedule was made: retrying won't help
                raise ApplicationError(err.message, non_retryable=True) from err
            await session.execute(
                insert(BulkEnrollment)
                .values(
                    id=bulk_id,
                    journey_id=journey_id,
                    list_id=audience.list_id,
                    segment_id=audience.segment_id,
                    workflow_id=run.workflow_id,
                    total=audience.total,
                )
                .on_conflict_do_nothing(index_elements=["id"])
            )
        return bulk_id

    @activity.defn
    async def enroll_page(self, page: BulkPage) -> BulkPageResult:
        async with self._sessions() as session:
            contact_ids = list(await session.scalars(await self._page_query(session, page)))

        async def one(contact_id: uuid.UUID) -> bool:
            try:
                _, created = await enroll_or_get(
                    self._sessions,
                    self._client,
                    self._options,
                    page.journey_key,
                    contact_id,
                    cause=f"audience:{page.list_key or page.segment_key}",
                    eager=True,  # this worker runs the enrollment's first task itself
                )
            except Conflict:  # refused by the journey's entry rules
                return False
            finally:
                # Alive: a worker that dies mid-page is noticed within the heartbeat
                # timeout, and the page is retried (enrolling nobody twice).
                activity.heartbeat()
            return created

        created = await gather_limited(_CONCURRENCY, one, contact_ids)
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

    async def _page_query(self, session: AsyncSession, page: BulkPage) -> Select[Any]:
        """The next page of members, in contact id order after the cursor."""
        after = page.progress.after_contact_id
        if page.segment_key is not None:
            segment = await session.scalar(
                select(Segment).where(col(Segment.key) == page.segment_key)
            )
            if segment is None:
                raise ApplicationError(f"no segment {page.segment_key!r}", non_retryable=True)
            # Evaluated page by page: who is in the segment when their page comes up.
            members = members_query(segment, after=after)
            if page.readmit:
                members = await readmittable(session, page.journey_key, members, col(Contact.id))
            return members.limit(page.page_size)
        query = (
            select(ListMembership.contact_id)
            .join(ContactList, col(ContactList.id) == col(ListMembership.list_id))
            .where(col(ContactList.key) == page.list_key)
            .order_by(col(ListMembership.contact_id))
            .limit(page.page_size)
        )
        if after is not None:
            query = query.where(col(ListMembership.contact_id) > after)
        if page.joined_since is not None:
            query = query.where(col(ListMembership.added_at) >= page.joined_since)
        if page.readmit:
            return await readmittable(
                session, page.journey_key, query, col(ListMembership.contact_id)
            )
        return query
