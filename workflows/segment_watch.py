"""`SegmentWatch`: re-check every watched segment every few minutes, or at once when asked.

One per namespace (`SEGMENT_WATCH_ID`), started by each worker with "use existing", so any
number of workers share it. Changes to a single contact are re-checked as they happen
(`nurture.journeys.triggers.on_contact_changed`); this loop catches the rest: time passing, edited
filters, imports (which ask for a sweep at once with the `sweep_now` signal).
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.segments import SegmentActivities
    from nurture.contracts import SEGMENT_WATCH_WORKFLOW, SegmentWatchInput, SweepResult

_SWEEPS_PER_RUN = 200  # then continue as new, so the history stays small


@workflow.defn(name=SEGMENT_WATCH_WORKFLOW)
class SegmentWatch:
    def __init__(self) -> None:
        self._requested = False
        self._last = SweepResult()

    @workflow.signal
    def sweep_now(self) -> None:
        self._requested = True

    @workflow.query
    def last_sweep(self) -> SweepResult:
        return self._last

    @workflow.run
    async def run(self, input: SegmentWatchInput) -> None:
        for sweep in range(input.sweeps + 1, input.sweeps + _SWEEPS_PER_RUN + 1):
            self._requested = False
            result = await workflow.execute_activity_method(
                SegmentActivities.sweep_segments,
                start_to_close_timeout=timedelta(hours=1),
                heartbeat_timeout=timedelta(minutes=5),
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
                summary="re-check watched segments",
            )
            self._last = result.model_copy(update={"sweep": sweep})
            workflow.set_current_details(
                f"sweep {sweep}: {self._last.segments} segments, {self._last.entered} entered, "
                f"{self._last.left} left, {self._last.enrolled} enrolled"
            )
            # Until asked for a sweep, or it is time for the next regular one.
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._requested,
                    timeout=timedelta(seconds=self._last.next_sweep_seconds),
                )
        workflow.continue_as_new(SegmentWatchInput(sweeps=input.sweeps + _SWEEPS_PER_RUN))
