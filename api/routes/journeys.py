"""Journeys: create and edit drafts, validate, publish versions, pause, resume, archive."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from temporalio.service import RPCError

from api.deps import ResourcesDep, SessionDep
from api.schemas.common import BODY_TOO_LARGE, Offset, error_responses
from api.schemas.journeys import (
    GoalConversionOut,
    JourneyCreatedOut,
    JourneyDraftIn,
    JourneyOut,
    JourneyPage,
    JourneyStatusOut,
    JourneySummary,
    ValidationOut,
    VersionOut,
    VersionSummary,
)
from nurture.db.models import Journey, JourneyStatus, JourneyVersion
from nurture.errors import Conflict, Invalid, NotFound, Unavailable
from nurture.journeys import lifecycle
from nurture.journeys.audiences import activate_audience, stop_audience
from nurture.journeys.conversion import goal_conversion
from nurture.journeys.ordering import in_order
from nurture.journeys.publishing import publish, publishable, save_draft
from nurture.journeys.starters import create_from_starter

router = APIRouter(prefix="/journeys", tags=["journeys"])

NO_JOURNEY = {404: "no journey with this key"}


async def _journey(session: AsyncSession, key: str) -> Journey:
    journey = await session.scalar(select(Journey).where(col(Journey.key) == key))
    if journey is None:
        raise NotFound(f"no journey {key!r}")
    return journey


async def _versions(session: AsyncSession, journey: Journey) -> list[JourneyVersion]:
    rows = await session.scalars(
        select(JourneyVersion)
        .where(col(JourneyVersion.journey_id) == journey.id)
        .order_by(col(JourneyVersion.version))
    )
    return list(rows)


def _version_out(journey: Journey, version: JourneyVersion) -> VersionOut:
    return VersionOut(
        journey_key=journey.key,
        version=version.version,
        published_at=version.published_at,
        definition=in_order(version.definition, version.definition_order),
    )


def _summary(journey: Journey, live_version: int | None) -> JourneySummary:
    return JourneySummary(
        key=journey.key,
        name=journey.name,
        status=JourneyStatus(journey.status),
        live_version=live_version,
        trigger_type=journey.trigger_type,
        trigger_key=journey.trigger_key,
        published_at=journey.published_at,
        created_at=journey.created_at,
        updated_at=journey.updated_at,
        owner=journey.owner,
        tags=journey.tags,
        description=journey.description,
        audience=journey.audience,
        rollout_percent=float(journey.rollout_percent),
    )


async def journey_out(session: AsyncSession, journey: Journey) -> JourneyOut:
    versions = await _versions(session, journey)
    live = versions[-1] if versions else None
    return JourneyOut(
        **_summary(journey, live.version if live else None).model_dump(),
        draft=in_order(journey.draft, journey.draft_order),
        versions=[VersionSummary(version=v.version, published_at=v.published_at) for v in versions],
        live=_version_out(journey, live) if live else None,
    )


@router.post(
    "",
    response_model=JourneyCreatedOut,
    response_model_exclude_unset=True,
    status_code=status.HTTP_201_CREATED,
    summary="Create a journey from a draft definition, or from a starter",
    description="Saves the definition as the draft of a new journey (status `draft`). A draft "
    "may be incomplete: only `key` and `name` are checked now; `validate` and `publish` report "
    "everything else. Nobody can enter the journey before it is published.\n\n"
    "With `?starter=<key>` (see `GET /v1/starters`) the draft is the starter's flow under the "
    "body's `key` and `name` (`owner`, `tags`, `description` given in the body replace the "
    "starter's); its templates are copied as `<key>-<template>`, and the lists and segments it "
    "names are created if missing. Publish it as it is, or edit it first.",
    responses=error_responses(
        {404: "no such starter", 409: "a journey with this key exists", 413: BODY_TOO_LARGE}
    ),
)
async def create_journey(
    body: JourneyDraftIn,
    resources: ResourcesDep,
    starter: Annotated[
        str | None, Query(description="create from this starter (GET /v1/starters)")
    ] = None,
) -> JourneyCreatedOut:
    try:
        async with resources.sessions.begin() as session:
            if await session.scalar(select(Journey.id).where(col(Journey.key) == body.key)):
                raise Conflict(f"journey {body.key!r} already exists")
            created: dict[str, list[str]] | None = None
            if starter is not None:
                given = body.definition()
                made = await create_from_starter(
                    session,
                    starter,
                    body.key,
                    body.name,
                    {k: given.get(k) for k in ("owner", "tags", "description")},
                )
                journey = made.journey
                created = {
                    "templates_created": made.templates_created,
                    "templates_reused": made.templates_reused,
                    "lists_created": made.lists_created,
                    "segments_created": made.segments_created,
                }
            else:
                journey = await save_draft(session, body.definition())
            out = await journey_out(session, journey)
    except IntegrityError:  # created concurrently
        raise Conflict(f"journey {body.key!r} already exists") from None
    if created is None:  # a plain create answers exactly what GET answers
        return JourneyCreatedOut(**out.model_dump())
    return JourneyCreatedOut(**out.model_dump(), created=created)


@router.put(
    "/{key}/draft",
    response_model=JourneyOut,
    summary="Replace a journey's draft",
    description="Replaces the whole draft; published versions, and the contacts running them, "
    "are not affected until the draft is published. The `key` in the body must be the "
    "journey's. An archived journey's draft cannot be changed.",
    responses=error_responses({**NO_JOURNEY, 409: "the journey is archived", 413: BODY_TOO_LARGE}),
)
async def replace_draft(key: str, body: JourneyDraftIn, resources: ResourcesDep) -> JourneyOut:
    if body.key != key:
        raise Invalid(
            "the draft's key must be the journey's",
            detail=[{"path": "body.key", "message": f"is {body.key!r}, expected {key!r}"}],
        )
    async with resources.sessions.begin() as session:
        await _journey(session, key)
        journey = await save_draft(session, body.definition(), key=key)
        return await journey_out(session, journey)


@router.post(
    "/{key}/validate",
    response_model=ValidationOut,
    summary="Validate a journey's draft",
    description="Checks the draft as publishing would: its shape, its graph (unknown targets, "
    "unreachable steps, loops without a wait, ...) and that every template it sends exists. "
    'Answers `{"valid": true}`, or 422 with every problem as `{path, message}` in `detail`.',
    responses=error_responses(
        {**NO_JOURNEY, 422: "the draft is invalid: `detail` lists every problem"}
    ),
)
async def validate_draft(key: str, session: SessionDep) -> ValidationOut:
    journey = await _journey(session, key)
    await publishable(session, journey.draft)
    return ValidationOut(valid=True)


@router.post(
    "/{key}/publish",
    response_model=VersionOut,
    status_code=status.HTTP_201_CREATED,
    summary="Publish the draft as a new version",
    description="Validates the draft (as `validate` does, templates included) and stores it as "
    "the next immutable version; a draft journey becomes `active`. New enrollments get this "
    "version; contacts already enrolled go on with the version they started.",
    responses=error_responses(
        {
            **NO_JOURNEY,
            409: "the journey is archived",
            422: "the draft is invalid or a template is missing: `detail` lists every problem",
        }
    ),
)
async def publish_draft(key: str, resources: ResourcesDep) -> VersionOut:
    async with resources.sessions.begin() as session:
        version = await publish(session, key)
        journey = await _journey(session, key)
        out = _version_out(journey, version)
    # A segment-based journey starts its run (or schedule) once the version is committed.
    try:
        await activate_audience(
            resources.sessions, resources.temporal, resources.enrollment_options, key
        )
    except RPCError as err:
        raise Unavailable(
            f"version {version.version} of {key!r} is published, but its audience could not be "
            f"scheduled ({err.message}); publish again to retry"
        ) from err
    return out


def _status_out(journey: Journey, signalled: int) -> JourneyStatusOut:
    return JourneyStatusOut(
        key=journey.key, status=JourneyStatus(journey.status), enrollments_signalled=signalled
    )


UNAVAILABLE = {503: "the status changed but Temporal could not be reached: repeat the request"}


@router.post(
    "/{key}/pause",
    response_model=JourneyStatusOut,
    summary="Pause a journey: enrolled contacts hold before their next send",
    description="The journey becomes `paused` and every in-flight enrollment is signalled "
    "`pause`: each holds before its next send (waits, branches and contact updates go on, and "
    "a goal met meanwhile still ends it). Contacts may still enter; they hold before their "
    "first send. Idempotent: pausing again signals every in-flight enrollment again.",
    responses=error_responses(
        {**NO_JOURNEY, 409: "the journey is unpublished or archived", **UNAVAILABLE}
    ),
)
async def pause_journey(key: str, resources: ResourcesDep) -> JourneyStatusOut:
    change = await lifecycle.pause(resources.sessions, resources.temporal, key)
    return _status_out(change.journey, change.signalled)


@router.post(
    "/{key}/resume",
    response_model=JourneyStatusOut,
    summary="Resume a paused journey: held contacts send and go on",
    description="The journey becomes `active` and every in-flight enrollment is signalled "
    "`resume`: a contact held before a send sends it now. Idempotent.",
    responses=error_responses(
        {**NO_JOURNEY, 409: "the journey is unpublished or archived", **UNAVAILABLE}
    ),
)
async def resume_journey(key: str, resources: ResourcesDep) -> JourneyStatusOut:
    change = await lifecycle.resume(resources.sessions, resources.temporal, key)
    return _status_out(change.journey, change.signalled)


@router.post(
    "/{key}/archive",
    response_model=JourneyStatusOut,
    summary="Archive a journey: nobody enters any more",
    description="The journey becomes `archived`: enrolling in it is refused (409), and its "
    "draft can no longer be changed or published. Contacts already enrolled are left to "
    "finish their version; unenroll them to stop them. A paused journey must be resumed "
    "first, since its held contacts could otherwise never go on. Archiving is final and "
    "idempotent.",
    responses=error_responses({**NO_JOURNEY, 409: "the journey is paused: resume it first"}),
)
async def archive_journey(key: str, resources: ResourcesDep) -> JourneyStatusOut:
    journey = await lifecycle.archive(resources.sessions, key)
    await stop_audience(resources.temporal, key)  # a recurring journey runs no more
    return _status_out(journey, 0)


@router.get(
    "/{key}",
    response_model=JourneyOut,
    summary="Get a journey: status, draft, versions and the live definition",
    responses=error_responses(NO_JOURNEY),
)
async def get_journey(key: str, session: SessionDep) -> JourneyOut:
    return await journey_out(session, await _journey(session, key))


@router.get(
    "/{key}/goal",
    response_model=GoalConversionOut,
    summary="Goal conversion: how many enrolled contacts met the goal",
    description="Counts distinct contacts, as HubSpot counts workflow goals. `conversion_rate` is "
    "`converted` (met the goal and were sent an email by the journey) over `enrolled` (contacts "
    "refused at entry for already meeting the goal are reported apart). A contact whose "
    "enrollment ended otherwise and who meets the live goal now counts as `met_goal_after`. "
    "Publishing a version without a goal restarts the counting (`counting_since`); publishing "
    "a changed goal does not.",
    responses=error_responses(NO_JOURNEY),
)
async def get_goal_conversion(key: str, session: SessionDep) -> GoalConversionOut:
    result = await goal_conversion(session, key)
    return GoalConversionOut(
        journey_key=result.journey_key,
        goal=result.goal.model_dump(mode="json") if result.goal else None,
        counting_since=result.counting_since,
        enrolled=result.enrolled,
        sent_marketing_email=result.sent_marketing_email,
        met_goal_while_enrolled=result.met_goal_while_enrolled,
        met_goal_after=result.met_goal_after,
        converted=result.converted,
        conversion_rate=result.conversion_rate,
        not_enrolled_goal_already_met=result.not_enrolled_goal_already_met,
    )


@router.get(
    "",
    response_model=JourneyPage,
    summary="List journeys",
    description="Ordered by key; filter by status, owner (exact email) and target tags (a "
    "journey carrying every `tag` given).",
    responses=error_responses(),
)
async def list_journeys(
    session: SessionDep,
    status_filter: Annotated[JourneyStatus | None, Query(alias="status")] = None,
    owner: Annotated[str | None, Query(description="the owner's email, exactly")] = None,
    tag: Annotated[
        list[str] | None, Query(description="a target tag; repeat for all of several")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> JourneyPage:
    query = select(Journey).order_by(col(Journey.key))
    if status_filter is not None:
        query = query.where(col(Journey.status) == status_filter)
    if owner is not None:
        query = query.where(func.lower(col(Journey.owner)) == owner.strip().lower())
    if tag:
        query = query.where(col(Journey.tags).contains(tag))
    journeys = list(await session.scalars(query.limit(limit).offset(offset)))
    live: dict[uuid.UUID, int] = {}
    if journeys:
        rows = await session.execute(
            select(col(JourneyVersion.journey_id), func.max(col(JourneyVersion.version)))
            .where(col(JourneyVersion.journey_id).in_([j.id for j in journeys]))
            .group_by(col(JourneyVersion.journey_id))
        )
        live = {journey_id: version for journey_id, version in rows}
    return JourneyPage(
        items=[_summary(j, live.get(j.id)) for j in journeys], limit=limit, offset=offset
    )
