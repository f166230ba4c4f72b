"""The Temporal Schedule that sends the weekly review (REVIEW_SCHEDULE, a cron in UTC)."""

from __future__ import annotations

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from nurture.analytics.review import REVIEW_SCHEDULE_ID, REVIEW_WORKFLOW


async def ensure_review_schedule(client: Client, task_queue: str, cron: str) -> None:
    """Create the schedule, or bring it to this cron and task queue (every worker calls this
    at start; the last one's settings win, and they are the same in one deployment)."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            REVIEW_WORKFLOW,
            id=f"{REVIEW_SCHEDULE_ID}:run",  # Temporal appends each run's time
            task_queue=task_queue,
        ),
        spec=ScheduleSpec(cron_expressions=[cron]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(REVIEW_SCHEDULE_ID, schedule)
    except ScheduleAlreadyRunningError:

        def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(REVIEW_SCHEDULE_ID).update(replace)
