"""Pausing, resuming and archiving a journey.

A journey's status is committed first, then its in-flight enrollments are signalled: a contact
enrolled after the commit starts already paused (or not), and one enrolled before it gets the
signal. Changes of one journey's status are serialized (a Postgres advisory lock held until the
signals are out), so a quick pause-then-resume cannot reach a workflow in the wrong order.

- pause: enrollments hold before their next send; waits, branches and contact updates go on,
  and new contacts may still enter (they hold before their first send).
- resume: held enrollments send at once and go on.
- archive: nobody can enter any more (`enroll` accepts only active and paused journeys), the
  draft can no longer be edited or published; enrollments in flight run to their end.

Pause and resume are idempotent: repeating one signals every in-flight enrollment again, which
is how a request that failed part way through signalling is finished.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.service import RPCError

from nurture.concurrency import gather_limited_outcomes
from nurture.db.engine import SessionFactory
from nurture.db.models import ACTIVE_ENROLLMENT_STATUSES, Enrollment, Journey, JourneyStatus, utcnow
from nurture.errors import Conflict, NotFound, Unavailable
from nurture.journeys.batch_signals import VISIBILITY_LAG, BatchUnsupported, signal_by_batch
from nurture.journeys.enrollments import signal_workflow

logger = logging.getLogger(__name__)

MAX_CONCURRENT_SIGNALS = 50
_PAGE_SIZE = 1000


@dataclass(frozen=True)
class StatusChange:
    journey: Journey
    signalled: int


async def pause(sessions: SessionFactory, client: Client, key: str) -> StatusChange:
    """Active (or already paused) -> paused; every in-flight enrollment gets "pause"."""
    return await _change(sessions, client, key, JourneyStatus.PAUSED, signal="pause")


async def resume(sessions: SessionFactory, client: Client, key: str) -> StatusChange:
    """Paused (or already active) -> active; every in-flight enrollment gets "resume"."""
    return await _change(sessions, client, key, JourneyStatus.ACTIVE, signal="resume")


async def archive(sessions: SessionFactory, key: str) -> Journey:
    """Draft or active -> archived; in-flight enrollments are left to finish."""
    async with sessions.begin() as session:
        await _lock(session, key)
        journey = await _journey_for_update(session, key)
        if journey.status == JourneyStatus.PAUSED:
            # Its contacts are held before their next send, and an archived journey cannot be
            # resumed: they would wait forever. Resume first (or unenroll them).
            raise Conflict(
                f"journey {key!r} is paused: resume it first, so that its enrollments can finish"
            )
        if journey.status != JourneyStatus.ARCHIVED:
            journey.status = JourneyStatus.ARCHIVED
            journey.updated_at = utcnow()
    return journey


async def _change(
    sessions: SessionFactory, client: Client, key: str, target: JourneyStatus, signal: str
) -> StatusChange:
    allowed = (JourneyStatus.ACTIVE, JourneyStatus.PAUSED)
    async with sessions.begin() as lock_session:
        await _lock(lock_session, key)  # held until every signal is out
        async with sessions.begin() as session:
            journey = await _journey_for_update(session, key)
            if journey.status not in allowed:
                if journey.status == JourneyStatus.ARCHIVED:
                    raise Conflict(f"journey {key!r} is archived: it cannot {signal}")
                raise Conflict(f"journey {key!r} is not published yet: nothing to {signal}")
            if journey.status != target:
                journey.status = target
                journey.updated_at = utcnow()
        try:
            signalled = await signal_everyone(sessions, client, journey, signal)
        except RPCError as failed:
            raise Unavailable(
                f"journey {key!r} is now {target}, but signalling its enrollments failed "
                f"({failed.message}); repeat the request to signal them all"
            ) from failed
    return StatusChange(journey, signalled)


async def signal_everyone(
    sessions: SessionFactory, client: Client, journey: Journey, signal: str
) -> int:
    """Signal every in-flight enrollment of the journey: one Temporal batch operation over a
    visibility query (`nurture.journeys.batch_signals`), then one by one those enrolled too
    recently to be listed; one by one for all where the server has no batch operations (the
    time-skipping test server). How many were signalled (by the batch, where there is one)."""
    began = utcnow()
    try:
        batch = await signal_by_batch(
            client, journey.key, signal, reason=f"Nurture: journey {journey.key!r} {signal}"
        )
    except BatchUnsupported as unsupported:
        logger.debug("no batch %s for %s (%s): one by one", signal, journey.key, unsupported)
        return await signal_journey_enrollments(sessions, client, journey.id, signal)
    late = await signal_journey_enrollments(
        sessions, client, journey.id, signal, since=began - VISIBILITY_LAG
    )
    logger.info(
        "%s %s: %d enrollments by batch, %d recent ones again one by one",
        signal,
        journey.key,
        batch.signalled,
        late,
    )
    return batch.signalled


async def signal_journey_enrollments(
    sessions: SessionFactory,
    client: Client,
    journey_id: uuid.UUID,
    signal: str,
    *,
    concurrency: int = MAX_CONCURRENT_SIGNALS,
    since: datetime | None = None,
) -> int:
    """Signal every in-flight enrollment of a journey (enrolled at `since` or later, if given),
    `concurrency` at a time, a page of ids at a time (a journey may hold millions); return how
    many were signalled. Enrollments that end meanwhile are skipped (RPCError NOT_FOUND)."""

    async def one(workflow_id: str) -> bool:
        return await signal_workflow(client, workflow_id, signal)

    signalled = 0
    after: uuid.UUID | None = None
    while True:
        query = (
            select(Enrollment.id, Enrollment.workflow_id)
            .where(
                col(Enrollment.journey_id) == journey_id,
                col(Enrollment.status).in_(ACTIVE_ENROLLMENT_STATUSES),
            )
            .order_by(col(Enrollment.id))
            .limit(_PAGE_SIZE)
        )
        if after is not None:
            query = query.where(col(Enrollment.id) > after)
        if since is not None:
            query = query.where(col(Enrollment.enrolled_at) >= since)
        async with sessions() as session:
            rows = (await session.execute(query)).all()
        results = await gather_limited_outcomes(concurrency, one, [wid for _, wid in rows])
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the rest of the page was still signalled
        signalled += sum(1 for result in results if result is True)
        if len(rows) < _PAGE_SIZE:
            return signalled
        after = rows[-1][0]


async def _lock(session: AsyncSession, key: str) -> None:
    """Serialize status changes of one journey until the session's transaction ends."""
    lock_id = func.hashtext(f"nurture.journey-status:{key}")
    await session.execute(sa_select(func.pg_advisory_xact_lock(lock_id)))


async def _journey_for_update(session: AsyncSession, key: str) -> Journey:
    journey = await session.scalar(select(Journey).where(col(Journey.key) == key).with_for_update())
    if journey is None:
        raise NotFound(f"no journey {key!r}")
    return journey
