"""A contact's timeline: `GET /v1/contacts/{ref}/timeline`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.contact_refs import ContactRefDep
from api.deps import SessionDep
from api.schemas.common import error_responses
from api.schemas.timeline import TimelineItem, TimelinePage
from nurture.audience.timeline import DEFAULT_LIMIT, MAX_LIMIT, contact_timeline, known_kinds

router = APIRouter(prefix="/contacts", tags=["contacts"])


@router.get(
    "/{ref}/timeline",
    response_model=TimelinePage,
    summary="What happened to a contact and why, newest first",
    description="Every journey the contact entered or did not enter (and why), the steps it "
    "took, each message sent or not sent (and why), opens, clicks and custom events, and "
    "every change to the contact with what made it, in words, newest first. Page with "
    "`before`: the `next` of the previous page. See docs/timeline.md for the kinds of entry "
    "and the reason codes.",
    responses=error_responses(
        {404: "no contact with this reference", 422: "a malformed reference, cursor or kind"}
    ),
)
async def get_timeline(
    contact_id: ContactRefDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="entries per page")] = (
        DEFAULT_LIMIT
    ),
    before: Annotated[
        str | None,
        Query(max_length=500, description="the `next` of the previous page: older entries"),
    ] = None,
    journey: Annotated[
        str | None,
        Query(min_length=1, max_length=64, description="only what concerns this journey"),
    ] = None,
    kinds: Annotated[
        str | None,
        Query(
            max_length=500,
            description="only these kinds of entry, comma-separated, e.g. `message,not_entered`"
            f" (known: {', '.join(known_kinds())})",
        ),
    ] = None,
) -> TimelinePage:
    page = await contact_timeline(
        session,
        contact_id,
        limit=limit,
        before=before,
        journey=journey,
        kinds=kinds.split(",") if kinds else None,
    )
    return TimelinePage(
        items=[
            TimelineItem(
                at=entry.at,
                kind=entry.kind,
                summary=entry.summary,
                journey=entry.journey,
                step=entry.step,
                reason=entry.reason,
                source=entry.source,
                detail=entry.detail,
            )
            for entry in page.entries
        ],
        next=page.next,
    )
