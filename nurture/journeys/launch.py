"""A journey's launch state: test contacts only, a canary share, widening it, and its counts.

The state lives on the journey (`Journey.audience`, `Journey.rollout_percent`), not in a
version: changing it needs no republishing and restarts nobody. Admission itself is one rule
in `nurture.journeys.rollout`, applied where every enrollment is claimed.

Widening (a larger percentage, or opening a test-only journey to everyone) takes effect at
once for every new entry. A journey whose audience is a segment (`segment` and
`segment_entered` triggers) or a list's members (`list_joined` with `only_new: false`) also
re-admits the members it kept out: a BulkEnroll run over the segment or list limited to the
contacts with a `held_back` or `test_contacts_only` note for this journey, not in it now, and
inside the new share (`readmittable`). Triggered journeys (new list members, event, API) admit
them from their next trigger on: the trigger that was refused is not replayed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, distinct, exists, false, func
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from temporalio.client import Client

from nurture.db.engine import SessionFactory
from nurture.db.models import (
    ACTIVE_ENROLLMENT_STATUSES,
    Contact,
    Enrollment,
    EnrollmentStatus,
    Journey,
    JourneyStatus,
    TimelineNote,
    utcnow,
)
from nurture.errors import Conflict, Invalid, NotFound
from nurture.journeys import rollout
from nurture.journeys.bulk import start_bulk_enrollment
from nurture.journeys.definition import ListJoinedTrigger, SegmentEnteredTrigger, SegmentTrigger
from nurture.journeys.enrollments import TEMPORAL_UNREACHABLE, EnrollmentOptions, parsed_definition
from nurture.journeys.publishing import latest_version

HELD_BACK = "held_back"
TEST_CONTACTS_ONLY = "test_contacts_only"
KEPT_OUT = (HELD_BACK, TEST_CONTACTS_ONLY)
_LIVE = (JourneyStatus.ACTIVE, JourneyStatus.PAUSED)


@dataclass(frozen=True)
class LaunchCounts:
    entered: int  # distinct contacts (not test contacts) enrolled
    test_contacts_entered: int
    held_back: int  # distinct contacts held back and not enrolled since
    held_back_notes: int  # times a contact was held back
    kept_out_test_only: int  # distinct contacts refused while test-only, not enrolled since


@dataclass(frozen=True)
class LaunchState:
    journey_key: str
    status: str
    audience: str
    rollout_percent: float
    counts: LaunchCounts
    readmit_run: str | None = None  # the BulkEnroll run started by this change, if any
    readmit_error: str | None = None  # why it could not be started (Temporal away)


async def launch_state(session: AsyncSession, key: str) -> LaunchState:
    journey = await _journey(session, key)
    return LaunchState(
        journey_key=journey.key,
        status=journey.status,
        audience=journey.audience,
        rollout_percent=float(journey.rollout_percent),
        counts=await launch_counts(session, journey),
    )


async def set_launch(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    key: str,
    *,
    audience: str | None = None,
    rollout_percent: float | None = None,
) -> LaunchState:
    """Change the launch state; a live segment-based journey left open re-admits the members
    it kept out and now takes (repeating the request after a 503 starts that run again)."""
    if audience is not None and audience not in rollout.AUDIENCES:
        raise Invalid(
            "unknown audience",
            detail=[
                {"path": "body.audience", "message": f"is {audience!r}: everyone or test_only"}
            ],
        )
    if rollout_percent is not None and not 0 <= rollout_percent <= 100:
        raise Invalid(
            "rollout_percent is a percentage",
            detail=[{"path": "body.rollout_percent", "message": "must be between 0 and 100"}],
        )
    async with sessions.begin() as session:
        journey = await session.scalar(
            select(Journey).where(col(Journey.key) == key).with_for_update()
        )
        if journey is None:
            raise NotFound(f"no journey {key!r}")
        if journey.status == JourneyStatus.ARCHIVED:
            raise Conflict(f"journey {key!r} is archived")
        if audience is not None:
            journey.audience = audience
        if rollout_percent is not None:
            journey.rollout_percent = round(rollout_percent, 2)
        journey.updated_at = utcnow()
        audience_of = await _readmit_audience(session, journey)
    run: str | None = None
    error: str | None = None
    if audience_of is not None:
        list_key, segment_key = audience_of
        try:
            bulk = await start_bulk_enrollment(
                sessions,
                client,
                options.task_queue,
                key,
                list_key=list_key,
                segment_key=segment_key,
                workflow_id=f"audience:{key}:readmit:{uuid.uuid4()}",
                readmit=True,
            )
            run = bulk.workflow_id
        except TEMPORAL_UNREACHABLE as err:
            error = f"the launch state is saved, but re-admitting could not start: {err}"
        except (NotFound, Conflict) as err:  # the segment was deleted, the journey archived
            error = f"the launch state is saved; nobody to re-admit: {err.message}"
    async with sessions() as session:
        state = await launch_state(session, key)
    return LaunchState(**{**state.__dict__, "readmit_run": run, "readmit_error": error})


async def _readmit_audience(
    session: AsyncSession, journey: Journey
) -> tuple[str | None, str | None] | None:
    """(list, segment) whose kept-out members to re-admit: a live journey, open to everyone,
    whose audience is a segment, or a list's members (`list_joined` with `only_new: false`);
    None for a triggered journey."""
    if journey.status not in _LIVE or journey.audience != rollout.EVERYONE:
        return None
    version = await latest_version(session, journey)
    if version is None:
        return None
    trigger = parsed_definition(version).trigger
    if isinstance(trigger, SegmentTrigger | SegmentEnteredTrigger):
        return None, trigger.segment
    if isinstance(trigger, ListJoinedTrigger) and not trigger.only_new:
        return trigger.list, None
    return None


async def readmittable(
    session: AsyncSession, journey_key: str, query: Select[Any], contact_id: Any
) -> Select[Any]:
    """Narrow a page of audience members to those a widening admits: kept out of this journey
    by its launch (a note says so), with no enrollment in flight, and inside the share now."""
    journey = await session.scalar(select(Journey).where(col(Journey.key) == journey_key))
    if journey is None or journey.audience != rollout.EVERYONE:
        return query.where(false())
    kept_out = select(col(TimelineNote.contact_id)).where(
        col(TimelineNote.journey_key) == journey_key,
        col(TimelineNote.kind) == "not_entered",
        col(TimelineNote.reason).in_(KEPT_OUT),
    )
    in_flight = select(col(Enrollment.contact_id)).where(
        col(Enrollment.journey_id) == journey.id,
        col(Enrollment.status).in_(ACTIVE_ENROLLMENT_STATUSES),
    )
    query = query.where(contact_id.in_(kept_out), contact_id.not_in(in_flight))
    percent = float(journey.rollout_percent)
    if percent < 100:
        query = query.where(
            rollout.bucket_sql(journey_key, contact_id) < rollout.threshold(percent)
        )
    return query


async def launch_counts(session: AsyncSession, journey: Journey) -> LaunchCounts:
    entered_rows = await session.execute(
        select(col(Contact.is_test), func.count(distinct(col(Enrollment.contact_id))))
        .join(Contact, col(Contact.id) == col(Enrollment.contact_id))
        .where(
            col(Enrollment.journey_id) == journey.id,
            col(Enrollment.status) != EnrollmentStatus.NOT_ENROLLED,
        )
        .group_by(col(Contact.is_test))
    )
    entered = {bool(is_test): int(n) for is_test, n in entered_rows}
    held_back = await _kept_out(session, journey, HELD_BACK)
    test_only = await _kept_out(session, journey, TEST_CONTACTS_ONLY)
    notes = await session.scalar(
        select(func.count()).where(
            col(TimelineNote.journey_key) == journey.key,
            col(TimelineNote.kind) == "not_entered",
            col(TimelineNote.reason) == HELD_BACK,
        )
    )
    return LaunchCounts(
        entered=int(entered.get(False, 0)),
        test_contacts_entered=int(entered.get(True, 0)),
        held_back=held_back,
        held_back_notes=int(notes or 0),
        kept_out_test_only=test_only,
    )


async def _kept_out(session: AsyncSession, journey: Journey, reason: str) -> int:
    """Distinct contacts with a note of this reason not followed by an enrollment."""
    enrolled_since = exists().where(
        col(Enrollment.journey_id) == journey.id,
        col(Enrollment.contact_id) == col(TimelineNote.contact_id),
        col(Enrollment.enrolled_at) >= col(TimelineNote.at),
    )
    total = await session.scalar(
        select(func.count(distinct(col(TimelineNote.contact_id)))).where(
            and_(
                col(TimelineNote.journey_key) == journey.key,
                col(TimelineNote.kind) == "not_entered",
                col(TimelineNote.reason) == reason,
            ),
            ~enrolled_since,
        )
    )
    return int(total or 0)


async def _journey(session: AsyncSession, key: str) -> Journey:
    journey = await session.scalar(select(Journey).where(col(Journey.key) == key))
    if journey is None:
        raise NotFound(f"no journey {key!r}")
    return journey
