"""Custom events for a contact, and opens/clicks of a message we sent."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from api.deps import ResourcesDep
from api.routes.enrollments import ERRORS
from api.schemas.events import EngagementIn, EventIn, EventOut
from nurture.audience.events import RecordedEvent, record_custom_event, record_engagement

router = APIRouter(tags=["events"])


def event_out(recorded: RecordedEvent) -> EventOut:
    return EventOut(
        id=recorded.event.id,
        kind=recorded.event.kind,
        name=recorded.event.name,
        contact_id=recorded.event.contact_id,
        duplicate=recorded.duplicate,
        signalled=recorded.signalled,
        started_enrollments=recorded.started_enrollments,
    )


@router.post(
    "/events",
    response_model=EventOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Record a custom event for a contact",
    description="The event is stored first (once per idempotency key), then delivered to the "
    "contact's in-flight enrollments (wait_for steps, goals) and starts journeys triggered by "
    "this event. Repeating a request with the same idempotency key records nothing new.",
    responses={409: {"description": "the idempotency key belongs to another event"}, **ERRORS},
)
async def post_event(body: EventIn, resources: ResourcesDep) -> EventOut:
    recorded = await record_custom_event(
        resources.sessions,
        resources.temporal,
        resources.enrollment_options,
        body.contact_id if body.contact_id is not None else str(body.external_id),
        body.name,
        body.properties,
        idempotency_key=body.idempotency_key,
        occurred_at=body.occurred_at,
    )
    return event_out(recorded)


@router.post(
    "/messages/{message_id}/engagements",
    response_model=EventOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Record an open or a click of a message",
    description="For your own tracking or a provider integration: the engagement is stored, "
    "then delivered to the enrollment that sent the message, so its wait_for and branch steps "
    "see it.",
    responses=ERRORS,
)
async def post_engagement(
    message_id: uuid.UUID, body: EngagementIn, resources: ResourcesDep
) -> EventOut:
    recorded = await record_engagement(
        resources.sessions,
        resources.temporal,
        message_id,
        body.kind,
        link=body.link,
        idempotency_key=body.idempotency_key,
        occurred_at=body.occurred_at,
        options=resources.enrollment_options,
    )
    return event_out(recorded)
