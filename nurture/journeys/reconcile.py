"""Starting the enrollments whose workflow never started.

An enrollment is committed `pending` before its workflow is started (see
`nurture.journeys.enrollments`); when Temporal is away at that moment the API answers 503 and
the row stays pending. Asking again starts it, but nobody may ask again: the worker runs this
reconciler beside its pollers, and it starts them once Temporal is back.

A pending row may also belong to a workflow that did start and has not yet run its first
activity (a busy worker); starting it again is harmless ("use existing" returns the running
workflow). So the reconciler walks all pending rows older than a grace period, a page per
round, from where the last round stopped, rather than the same oldest page each time.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, select
from temporalio.client import Client
from temporalio.service import RPCError

from nurture.db.engine import SessionFactory
from nurture.db.models import (
    Enrollment,
    EnrollmentStatus,
    Journey,
    JourneyStatus,
    JourneyVersion,
    utcnow,
)
from nurture.journeys.enrollments import (
    SERVER_AWAY,
    TEMPORAL_UNREACHABLE,
    EnrollmentOptions,
    start_workflow,
)

logger = logging.getLogger(__name__)

# Younger pending rows are left to the request that created them, which is starting them now.
GRACE = timedelta(seconds=30)
PAGE = 200


@dataclass
class PendingStarter:
    sessions: SessionFactory
    client: Client
    options: EnrollmentOptions
    grace: timedelta = GRACE
    page: int = PAGE
    _after: tuple[datetime, uuid.UUID] | None = (
        None  # (enrolled_at, id) where the last round stopped
    )

    async def start_pending(self) -> int:
        """One round: (re)start up to a page of pending enrollments; how many were started.
        Stops at the first sign that Temporal is away (the next round tries again)."""
        query = (
            select(Enrollment, JourneyVersion, Journey)
            .join(JourneyVersion, col(JourneyVersion.id) == col(Enrollment.journey_version_id))
            .join(Journey, col(Journey.id) == col(Enrollment.journey_id))
            .where(
                col(Enrollment.status) == EnrollmentStatus.PENDING,
                col(Enrollment.enrolled_at) < utcnow() - self.grace,
            )
            .order_by(col(Enrollment.enrolled_at), col(Enrollment.id))
            .limit(self.page)
        )
        if self._after is not None:
            at, last_id = self._after
            query = query.where(
                (col(Enrollment.enrolled_at) > at)
                | ((col(Enrollment.enrolled_at) == at) & (col(Enrollment.id) > last_id))
            )
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        if len(rows) < self.page:
            self._after = None  # the end: the next round starts from the oldest again
        started = 0
        for enrollment, version, journey in rows:
            try:
                await start_workflow(
                    self.client,
                    self.options,
                    enrollment,
                    journey.key,
                    version,
                    paused=journey.status == JourneyStatus.PAUSED,
                )
            except TEMPORAL_UNREACHABLE as err:
                if isinstance(err, RPCError) and err.status not in SERVER_AWAY:
                    logger.warning("pending enrollment %s not started: %s", enrollment.id, err)
                    continue
                logger.warning("pending enrollments wait: Temporal unavailable (%s)", err)
                return started
            started += 1
            if len(rows) == self.page:
                self._after = (enrollment.enrolled_at, enrollment.id)
        return started

    async def keep_starting(self, every: timedelta = timedelta(seconds=15)) -> None:
        """Run `start_pending` every so often, for as long as the process lives."""
        while True:
            try:
                started = await self.start_pending()
                if started:
                    logger.info("started or confirmed %d pending enrollments", started)
            except Exception:  # the database may be away: try again next round
                logger.exception("pending enrollments round failed")
            await asyncio.sleep(every.total_seconds())
