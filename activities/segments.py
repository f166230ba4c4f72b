"""Re-checking watched segments, for the SegmentWatch workflow (`nurture.audience.segments.membership`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import activity
from temporalio.client import Client

from nurture.audience.segments.membership import ADMIT_BATCH, sweep, unadmitted
from nurture.contracts import SweepResult
from nurture.db.engine import SessionFactory
from nurture.journeys.enrollments import EnrollmentOptions
from nurture.journeys.triggers import admit


class SegmentActivities:
    def __init__(
        self,
        sessions: SessionFactory,
        client: Client,
        options: EnrollmentOptions,
        sweep_seconds: int = 300,
    ):
        self._sessions = sessions
        self._client = client
        self._options = options
        self._sweep_seconds = sweep_seconds

    @activity.defn
    async def sweep_segments(self) -> SweepResult:
        """Compare every watched segment with its members, then give each entry (new, or left
        over from an earlier attempt) to the journeys it starts. Safe to retry: entries are
        rows, and an entry already given to a journey is not given again."""
        async with _heartbeating():
            report = await sweep(self._sessions)
            admitted = enrolled = 0
            deferred = False
            while entries := await unadmitted(self._sessions, ADMIT_BATCH):
                given = await admit(self._sessions, self._client, self._options, entries)
                admitted += given.admitted
                enrolled += len(given.enrollments)
                if given.deferred:  # Temporal is in trouble: the next sweep tries again
                    deferred = True
                    break
        return SweepResult(
            segments=report.segments,
            entered=report.entered,
            left=report.left,
            admitted=admitted,
            enrolled=enrolled,
            deferred=deferred,
            next_sweep_seconds=self._sweep_seconds,
        )


@contextlib.asynccontextmanager
async def _heartbeating(every: float = 30) -> AsyncIterator[None]:
    """Heartbeat on a timer while the body runs: comparing one big segment is a single
    statement that may outlast the heartbeat timeout, and is alive all the same."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
