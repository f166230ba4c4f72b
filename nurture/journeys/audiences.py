"""Segment-based journeys (seed 003): enrolling a segment once, or on a schedule.

Called after a journey is published. A journey triggered by `{"type": "segment", ...}`:

- once / once_and_new: one BulkEnroll run over the segment (at `start_at`, or now), under a
  workflow id fixed per journey, so publishing again never runs it a second time. With
  once_and_new, contacts who join the segment later enter as they join (`nurture.journeys.triggers`).
- recurring: a Temporal Schedule (`audience:{journey}`) starts a BulkEnroll run on the cron
  expression, in the journey's time zone, from `start_at`; each run has its own progress row.
  Publishing again updates the schedule; archiving the journey deletes it.

A journey triggered by joining a list with `only_new: false` also takes the list's members
at publish, through one BulkEnroll run under a fixed id (`audience:{journey}:members`), so
publishing again does not run it twice; later joiners enter as they join.

Every run enrolls through `enroll_or_get` and the journey's entry rules: nobody is enrolled
twice by a retried page, a resumed run or an overlapping run.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import col, select
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
from temporalio.service import RPCError, RPCStatusCode

from nurture.contracts import BULK_ENROLL_WORKFLOW, BulkEnrollInput
from nurture.db.engine import SessionFactory
from nurture.db.models import Journey, utcnow
from nurture.errors import NotFound
from nurture.journeys.bulk import start_bulk_enrollment
from nurture.journeys.definition import ListJoinedTrigger, SegmentTrigger
from nurture.journeys.enrollments import EnrollmentOptions, parsed_definition
from nurture.journeys.publishing import latest_version

logger = logging.getLogger(__name__)


def schedule_id(journey_key: str) -> str:
    return f"audience:{journey_key}"


def once_workflow_id(journey_key: str) -> str:
    return f"audience:{journey_key}:once"


def members_workflow_id(journey_key: str) -> str:
    return f"audience:{journey_key}:members"


async def activate_audience(
    sessions: SessionFactory, client: Client, options: EnrollmentOptions, journey_key: str
) -> str | None:
    """Start what the live version's trigger asks for at publish: a segment's run or schedule,
    or a list's existing members (`only_new: false`); its id, or None when there is nothing."""
    trigger = await _live_trigger(sessions, journey_key)
    if not isinstance(trigger, SegmentTrigger) or trigger.mode != "recurring":
        await stop_audience(client, journey_key)  # no longer recurring: no more runs
    if isinstance(trigger, ListJoinedTrigger) and not trigger.only_new:
        bulk = await start_bulk_enrollment(
            sessions,
            client,
            options.task_queue,
            journey_key,
            list_key=trigger.list,
            workflow_id=members_workflow_id(journey_key),
        )
        return bulk.workflow_id
    if not isinstance(trigger, SegmentTrigger):
        return None
    first_run = _first_run(trigger)
    if trigger.mode in ("once", "once_and_new"):
        delay = first_run - utcnow() if first_run is not None else None
        bulk = await start_bulk_enrollment(
            sessions,
            client,
            options.task_queue,
            journey_key,
            segment_key=trigger.segment,
            workflow_id=once_workflow_id(journey_key),
            start_delay=delay if delay is not None and delay > timedelta(0) else None,
        )
        return bulk.workflow_id
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            BULK_ENROLL_WORKFLOW,
            BulkEnrollInput(journey_key=journey_key, segment_key=trigger.segment),
            id=f"{schedule_id(journey_key)}:run",  # Temporal appends each run's time
            task_queue=options.task_queue,
        ),
        spec=ScheduleSpec(
            cron_expressions=[trigger.cron or ""],
            time_zone_name=trigger.time_zone,
            start_at=first_run,
        ),
        # A run still going when the next is due (a huge segment) is not doubled up.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(schedule_id(journey_key), schedule)
    except ScheduleAlreadyRunningError:

        def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(schedule_id(journey_key)).update(replace)
    return schedule_id(journey_key)


async def stop_audience(client: Client, journey_key: str) -> bool:
    """Delete the journey's schedule, if it has one."""
    try:
        await client.get_schedule_handle(schedule_id(journey_key)).delete()
    except RPCError as err:
        if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.UNIMPLEMENTED):
            return False  # none (or a test server without schedules): nothing to stop
        raise
    return True


def _first_run(trigger: SegmentTrigger) -> datetime | None:
    if trigger.start_at is None:
        return None
    return trigger.start_at.replace(tzinfo=ZoneInfo(trigger.time_zone))


async def _live_trigger(sessions: SessionFactory, journey_key: str) -> object:
    async with sessions() as session:
        journey = await session.scalar(select(Journey).where(col(Journey.key) == journey_key))
        if journey is None:
            raise NotFound(f"no journey {journey_key!r}")
        version = await latest_version(session, journey)
    if version is None:
        return None
    return parsed_definition(version).trigger
