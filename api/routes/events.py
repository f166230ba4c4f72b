"""Custom events for a contact, and opens/clicks of a message we sent."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from api.deps import ResourcesDep
from api.errors import error_detail
from api.routes.enrollments import ERRORS
from api.schemas.events import (
    EngagementIn,
    EventBatchIn,
    EventBatchOut,
    EventBatchResult,
    EventError,
    EventIn,
    EventOut,
)
from nurture.audience.events import (
    IncomingEvent,
    RecordedEvent,
    record_custom_event,
    record_custom_events,
    record_engagement,
)
from nurture.errors import NurtureError

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
        body.contact,
        body.name,
        body.properties,
        idempotency_key=body.idempotency_key,
        occurred_at=body.occurred_at,
    )
    return event_out(recorded)


@router.post(
    "/events/batch",
    response_model=EventBatchOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Record up to 1,000 custom events at once",
    description="Each event as POST /v1/events records it (stored once per idempotency key, "
    "then delivered to its contact's enrollments and journeys), all of them stored in one "
    "statement; the events of one contact are delivered in the order given. Each event has its "
    "own result, in the request's order, with the status POST /v1/events would have answered "
    "for it alone: one unknown contact does not fail the others. The answer is 202 when every "
    "event was recorded (or repeated an idempotency key), 207 when some were not. A body that "
    "is not a valid batch is refused whole (422, naming the event and field).",
    responses={
        207: {"model": EventBatchOut, "description": "some events were not recorded"},
        **ERRORS,
    },
)
async def post_events(
    body: EventBatchIn, resources: ResourcesDep, response: Response
) -> EventBatchOut:
    outcomes = await record_custom_events(
        resources.sessions,
        resources.temporal,
        resources.enrollment_options,
        [
            IncomingEvent(
                e.contact,
                e.name,
                e.properties,
                idempotency_key=e.idempotency_key,
                occurred_at=e.occurred_at,
            )
            for e in body.events
        ],
    )
    results = [_batch_result(index, outcome) for index, outcome in enumerate(outcomes)]
    failed = sum(result.error is not None for result in results)
    if failed:
        response.status_code = status.HTTP_207_MULTI_STATUS
    return EventBatchOut(
        recorded=sum(r.event is not None and not r.event.duplicate for r in results),
        duplicates=sum(r.event is not None and r.event.duplicate for r in results),
        failed=failed,
        results=results,
    )


def _batch_result(index: int, outcome: RecordedEvent | NurtureError) -> EventBatchResult:
    if isinstance(outcome, NurtureError):
        return EventBatchResult(
            index=index,
            status=outcome.status_code,
            error=EventError(error=outcome.error, detail=error_detail(outcome)),
        )
    return EventBatchResult(index=index, status=status.HTTP_202_ACCEPTED, event=event_out(outcome))


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
