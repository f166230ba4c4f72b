"""Enroll, unenroll, trace an enrollment; enroll a whole list in the background."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from api.deps import ResourcesDep, SessionDep
from api.outages import saved_if_temporal_away
from api.resources import Resources
from api.schemas.common import Offset
from api.schemas.enrollments import (
    BulkEnrollmentOut,
    BulkEnrollRequest,
    ContactRef,
    EnrollmentOut,
    EnrollmentPage,
    EnrollRequest,
    MessageSummary,
    PathStep,
    UnenrollRequest,
)
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    BulkEnrollment,
    Contact,
    ContactList,
    Enrollment,
    EnrollmentStep,
    Journey,
    Message,
)
from nurture.errors import NotFound
from nurture.journeys.bulk import start_bulk_enrollment
from nurture.journeys.enrollments import enroll_or_get, unenroll

router = APIRouter(tags=["enrollments"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    404: {"description": "unknown journey, contact, list or enrollment"},
    409: {"description": "the journey does not accept this contact (status, re-entry rules)"},
    503: {"description": "Postgres or Temporal cannot be reached; retry after Retry-After"},
}


async def resolve_contact(sessions: SessionFactory, ref: ContactRef) -> uuid.UUID:
    """The contact's id. Uses its own short session: a request must not hold a pooled
    connection while a service it calls takes another (at high concurrency the pool would
    run dry with every request waiting on the next)."""
    async with sessions() as session:
        return await _contact_id(session, ref)


async def _contact_id(session: AsyncSession, ref: ContactRef) -> uuid.UUID:
    if ref.contact_id is not None:
        if await session.get(Contact, ref.contact_id) is None:
            raise NotFound(f"no contact {ref.contact_id}")
        return ref.contact_id
    contact_id = await session.scalar(
        select(Contact.id).where(col(Contact.external_id) == ref.external_id)
    )
    if contact_id is None:
        raise NotFound(f"no contact with external id {ref.external_id!r}")
    return contact_id


def enrollment_body(
    resources: Resources, enrollment: Enrollment, journey_key: str
) -> EnrollmentOut:
    """The answer for an enrollment whose journey key the caller knows (no read)."""
    return EnrollmentOut(
        id=enrollment.id,
        journey_key=journey_key,
        version=enrollment.version,
        contact_id=enrollment.contact_id,
        status=enrollment.status,
        current_step=enrollment.current_step,
        exit_reason=enrollment.exit_reason,
        enrolled_at=enrollment.enrolled_at,
        ended_at=enrollment.ended_at,
        workflow_id=enrollment.workflow_id,
        temporal_url=resources.workflow_url(enrollment.workflow_id),
        path=None,
        messages=None,
    )


async def enrollment_out(
    session: AsyncSession, resources: Resources, enrollment: Enrollment, with_path: bool
) -> EnrollmentOut:
    journey = await session.get(Journey, enrollment.journey_id)
    assert journey is not None
    path = messages = None
    if with_path:
        sent = await session.scalars(
            select(Message)
            .where(col(Message.enrollment_id) == enrollment.id)
            .order_by(col(Message.created_at))
        )
        messages = [
            MessageSummary(
                id=m.id,
                step=m.step_id,
                channel=m.channel,
                template=m.template,
                status=m.status,
                reason=m.reason,
                created_at=m.created_at,
            )
            for m in sent
        ]
        rows = await session.scalars(
            select(EnrollmentStep)
            .where(col(EnrollmentStep.enrollment_id) == enrollment.id)
            .order_by(col(EnrollmentStep.entered_at), col(EnrollmentStep.id))
        )
        path = [
            PathStep(
                step=r.step_id,
                type=r.step_type,
                visit=r.visit,
                entered_at=r.entered_at,
                left_at=r.left_at,
                outcome=r.outcome,
            )
            for r in rows
        ]
    return EnrollmentOut(
        id=enrollment.id,
        journey_key=journey.key,
        version=enrollment.version,
        contact_id=enrollment.contact_id,
        status=enrollment.status,
        current_step=enrollment.current_step,
        exit_reason=enrollment.exit_reason,
        enrolled_at=enrollment.enrolled_at,
        ended_at=enrollment.ended_at,
        workflow_id=enrollment.workflow_id,
        temporal_url=resources.workflow_url(enrollment.workflow_id),
        path=path,
        messages=messages,
    )


@router.post(
    "/enrollments",
    response_model=EnrollmentOut,
    status_code=status.HTTP_201_CREATED,
    summary="Enroll a contact in a journey",
    description="Enrolls the contact in the journey's latest published version. Idempotent: "
    "while the contact is in the journey, the same request returns the existing enrollment "
    "with 200. The enrollment row is committed before its workflow starts.",
    responses={200: {"description": "already enrolled: the existing enrollment"}, **ERRORS},
)
async def create_enrollment(
    body: EnrollRequest, resources: ResourcesDep, response: Response
) -> EnrollmentOut:
    # The contact is resolved in the claim's one read, and the answer is built from what the
    # claim returned: the request costs a few round trips on one pooled connection at a time
    # (tests/test_round_trips.py counts them).
    with saved_if_temporal_away(
        "the enrollment is saved (pending) and starts once Temporal is back; repeating the "
        "request returns it"
    ):
        enrollment, created = await enroll_or_get(
            resources.sessions,
            resources.temporal,
            resources.enrollment_options,
            body.journey_key,
            body.contact,
        )
    if not created:
        response.status_code = status.HTTP_200_OK
    return enrollment_body(resources, enrollment, body.journey_key)


@router.get(
    "/enrollments/{enrollment_id}",
    response_model=EnrollmentOut,
    summary="Get an enrollment: status, current step, path taken, Temporal UI link",
    responses=ERRORS,
)
async def get_enrollment(
    enrollment_id: uuid.UUID, resources: ResourcesDep, session: SessionDep
) -> EnrollmentOut:
    enrollment = await session.get(Enrollment, enrollment_id)
    if enrollment is None:
        raise NotFound(f"no enrollment {enrollment_id}")
    return await enrollment_out(session, resources, enrollment, with_path=True)


@router.get(
    "/enrollments",
    response_model=EnrollmentPage,
    summary="List enrollments of a contact or of a journey",
    responses=ERRORS,
)
async def list_enrollments(
    resources: ResourcesDep,
    session: SessionDep,
    contact_id: uuid.UUID | None = None,
    journey_key: str | None = None,
    status_filter: Annotated[str | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> EnrollmentPage:
    query = select(Enrollment).order_by(col(Enrollment.enrolled_at).desc(), col(Enrollment.id))
    if contact_id is not None:
        query = query.where(col(Enrollment.contact_id) == contact_id)
    if journey_key is not None:
        journey_id = await session.scalar(select(Journey.id).where(col(Journey.key) == journey_key))
        if journey_id is None:
            raise NotFound(f"no journey {journey_key!r}")
        query = query.where(col(Enrollment.journey_id) == journey_id)
    if status_filter is not None:
        query = query.where(col(Enrollment.status) == status_filter)
    rows = (await session.scalars(query.limit(limit).offset(offset))).all()
    items = [await enrollment_out(session, resources, row, with_path=False) for row in rows]
    return EnrollmentPage(items=items, limit=limit, offset=offset)


@router.post(
    "/enrollments/{enrollment_id}/unenroll",
    response_model=EnrollmentOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Unenroll: the contact leaves the journey at once",
    description="Signals the enrollment to stop; it records the exit (reason `unenrolled`, or "
    "the reason given) within moments. Unenrolling an ended enrollment changes nothing.",
    responses=ERRORS,
)
async def unenroll_enrollment(
    enrollment_id: uuid.UUID,
    resources: ResourcesDep,
    session: SessionDep,
    body: UnenrollRequest | None = None,
) -> EnrollmentOut:
    reason = body.reason if body else "unenrolled"
    with saved_if_temporal_away("the enrollment was not told to stop; repeat the request"):
        enrollment = await unenroll(resources.sessions, resources.temporal, enrollment_id, reason)
    return await enrollment_out(session, resources, enrollment, with_path=False)


@router.post(
    "/journeys/{journey_key}/bulk-enrollments",
    response_model=BulkEnrollmentOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Enroll every member of a list, in the background",
    description="Starts a background workflow that enrolls the list page by page; follow it "
    "with GET /v1/bulk-enrollments/{id}. Contacts already in the journey, or refused by its "
    "entry rules, are counted as skipped; nobody is enrolled twice.",
    responses=ERRORS,
)
async def bulk_enroll(
    journey_key: str, body: BulkEnrollRequest, resources: ResourcesDep, session: SessionDep
) -> BulkEnrollmentOut:
    bulk = await start_bulk_enrollment(
        resources.sessions,
        resources.temporal,
        resources.settings.temporal_task_queue,
        journey_key,
        body.list,
    )
    return await bulk_out(session, bulk.id)


@router.get(
    "/bulk-enrollments/{bulk_id}",
    response_model=BulkEnrollmentOut,
    summary="Progress of a bulk enrollment (done / total)",
    responses=ERRORS,
)
async def get_bulk_enrollment(bulk_id: uuid.UUID, session: SessionDep) -> BulkEnrollmentOut:
    return await bulk_out(session, bulk_id)


async def bulk_out(session: AsyncSession, bulk_id: uuid.UUID) -> BulkEnrollmentOut:
    row = (
        await session.execute(
            select(BulkEnrollment, Journey.key, ContactList.key)
            .join(Journey, col(Journey.id) == col(BulkEnrollment.journey_id))
            .join(ContactList, col(ContactList.id) == col(BulkEnrollment.list_id))
            .where(col(BulkEnrollment.id) == bulk_id)
            .execution_options(populate_existing=True)
        )
    ).first()
    if row is None:
        raise NotFound(f"no bulk enrollment {bulk_id}")
    bulk, journey_key, list_key = row
    return BulkEnrollmentOut(
        id=bulk.id,
        journey_key=journey_key,
        list_key=list_key,
        status=bulk.status,
        total=bulk.total,
        done=bulk.done,
        enrolled=bulk.enrolled,
        skipped=bulk.skipped,
        created_at=bulk.created_at,
        finished_at=bulk.finished_at,
    )
