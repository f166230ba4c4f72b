"""The workspace's send rules: `GET/PUT /v1/send-rules`, and `GET /v1/send-rules/holds`, how
many sends the rules held, delayed or skipped (docs/send-rules.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ResourcesDep, SessionDep
from api.schemas.common import BODY_TOO_LARGE, IsoDateTime, error_responses
from api.schemas.send_rules import HoldCount, HoldCounts
from nurture.errors import Invalid
from nurture.sending.gate import hold_counts
from nurture.sending.rules import SendRules, load_send_rules, save_send_rules

router = APIRouter(prefix="/send-rules", tags=["send rules"])


@router.get(
    "",
    response_model=SendRules,
    response_model_exclude_none=True,  # a window's unset days and channels: all of them
    summary="The workspace's send rules: frequency caps, quiet hours, default time zone",
    responses=error_responses(),
)
async def get_send_rules(session: SessionDep) -> SendRules:
    return await load_send_rules(session)


@router.put(
    "",
    response_model=SendRules,
    response_model_exclude_none=True,
    summary="Replace the workspace's send rules",
    description="Frequency caps per contact and channel over all journeys (rolling windows), "
    "quiet hours in the contact's time zone, and the time zone for contacts without one. "
    "Sends decided from now on follow them; a send already held is decided again when it "
    "wakes. Invalid rules are refused with the path of each problem.",
    responses=error_responses({413: BODY_TOO_LARGE}),
)
async def put_send_rules(rules: SendRules, resources: ResourcesDep) -> SendRules:
    async with resources.sessions.begin() as session:
        await save_send_rules(session, rules)
    return rules


@router.get(
    "/holds",
    response_model=HoldCounts,
    summary="How many sends the rules held, delayed or skipped, by rule, action and channel",
    responses=error_responses(),
)
async def get_hold_counts(
    session: SessionDep,
    since: Annotated[IsoDateTime | None, Query(description="from this instant (ISO 8601)")] = None,
    until: Annotated[IsoDateTime | None, Query(description="before this instant")] = None,
    journey: Annotated[str | None, Query(max_length=64, description="one journey's")] = None,
) -> HoldCounts:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise Invalid(
                f"{name} needs a UTC offset",
                detail=[{"path": f"query.{name}", "message": "add an offset, e.g. Z or +01:00"}],
            )
    rows = await hold_counts(session, since, until, journey)
    return HoldCounts(
        since=since,
        until=until,
        journey=journey,
        counts=[HoldCount(rule=r, action=a, channel=c, count=n) for r, a, c, n in rows],
    )
