"""Launching journeys safely: launch state (test contacts only, canary share), version diffs,
clones, and the starters a journey can begin from (docs/launching.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from api.deps import ResourcesDep, SessionDep
from api.routes.journeys import journey_out
from api.schemas.common import error_responses
from api.schemas.journeys import JourneyCreatedOut
from api.schemas.launch import (
    CloneIn,
    DiffChangeOut,
    DiffOut,
    LaunchCountsOut,
    LaunchIn,
    LaunchOut,
    StarterList,
    StarterOut,
    StarterSummary,
)
from nurture.db.models import Journey, JourneyVersion
from nurture.errors import Conflict, Invalid, NotFound
from nurture.journeys.diff import diff
from nurture.journeys.launch import LaunchState, launch_state, set_launch
from nurture.journeys.ordering import in_order
from nurture.journeys.starters import Starter, clone_journey, starter, starters

router = APIRouter(tags=["launching"])

NO_JOURNEY = {404: "no journey with this key"}


def _launch_out(state: LaunchState) -> LaunchOut:
    return LaunchOut(
        journey_key=state.journey_key,
        status=state.status,
        audience=state.audience,
        rollout_percent=state.rollout_percent,
        counts=LaunchCountsOut(**state.counts.__dict__),
        readmit_run=state.readmit_run,
        readmit_error=state.readmit_error,
    )


@router.get(
    "/journeys/{key}/launch",
    response_model=LaunchOut,
    summary="A journey's launch state and counts",
    description="Who the journey admits (`audience`: everyone or test_only; `rollout_percent`) "
    "and how many entered, were held back by the rollout, or were kept out while it was "
    "test-only. Test contacts are counted apart.",
    responses=error_responses(NO_JOURNEY),
)
async def get_launch(key: str, session: SessionDep) -> LaunchOut:
    return _launch_out(await launch_state(session, key))


@router.put(
    "/journeys/{key}/launch",
    response_model=LaunchOut,
    summary="Change who a journey admits: test contacts only, or a canary share",
    description="Takes effect at once for every new entry, without republishing and without "
    "restarting anyone. `audience: test_only` admits test contacts alone (real sends); "
    "`rollout_percent` admits that share of the others, chosen by a stable hash of the contact "
    "and the journey, so widening keeps everyone already in. When the journey is live, open to "
    "everyone and starts from a segment (`segment`, `segment_entered`) or a list's members "
    "(`list_joined`, `only_new: false`), the members it kept out and now takes are enrolled by "
    "a run (`readmit_run`); triggered journeys admit "
    "them from their next trigger on. Allowed on drafts, so a journey can be published "
    "test-only or as a canary from the start.",
    responses=error_responses(
        {
            **NO_JOURNEY,
            409: "the journey is archived",
            422: "an unknown audience or a share outside 0-100",
        }
    ),
)
async def put_launch(key: str, body: LaunchIn, resources: ResourcesDep) -> LaunchOut:
    state = await set_launch(
        resources.sessions,
        resources.temporal,
        resources.enrollment_options,
        key,
        audience=body.audience,
        rollout_percent=body.rollout_percent,
    )
    return _launch_out(state)


async def _side(session: AsyncSession, journey: Journey, which: str, path: str) -> dict[str, Any]:
    """A definition to compare: `draft`, `live` (the latest version) or a version number."""
    if which == "draft":
        return in_order(journey.draft, journey.draft_order)
    query = select(JourneyVersion).where(col(JourneyVersion.journey_id) == journey.id)
    if which == "live":
        query = query.order_by(col(JourneyVersion.version).desc()).limit(1)
    elif which.isdigit():
        query = query.where(col(JourneyVersion.version) == int(which))
    else:
        raise Invalid(
            "a version is a number, draft or live",
            detail=[{"path": path, "message": f"is {which!r}: a version number, draft or live"}],
        )
    version = await session.scalar(query)
    if version is None:
        raise NotFound(f"journey {journey.key!r} has no version {which}")
    return in_order(version.definition, version.definition_order)


@router.get(
    "/journeys/{key}/versions/{a}/diff/{b}",
    response_model=DiffOut,
    response_model_by_alias=True,
    summary="What changed between two versions (or the draft and the live version)",
    description="`a` and `b` are version numbers, `draft` or `live` (the latest published "
    "version): `.../versions/live/diff/draft` shows what publishing the draft would change. "
    "Lists the steps added, removed and changed (field by field), and changes of trigger, "
    "entry rules, goal and settings (name, description, owner, tags, time zone, start), each "
    "in words (`summary`) and structured (`changes`).",
    responses=error_responses({404: "no such journey or version"}),
)
async def get_diff(key: str, a: str, b: str, session: SessionDep) -> DiffOut:
    journey = await session.scalar(select(Journey).where(col(Journey.key) == key))
    if journey is None:
        raise NotFound(f"no journey {key!r}")
    before = await _side(session, journey, a, "path.a")
    after = await _side(session, journey, b, "path.b")
    changes = diff(before, after)
    return DiffOut.model_validate(
        {
            "journey_key": key,
            "from": a,
            "to": b,
            "summary": [change.summary for change in changes],
            "changes": [DiffChangeOut(**change.__dict__) for change in changes],
        }
    )


@router.post(
    "/journeys/{key}/clone",
    response_model=JourneyCreatedOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create a journey from another one",
    description="A new draft journey from this journey's draft (or one of its published "
    "versions), with copies of its templates under the new key (`<new key>-<template>`; a "
    "template the source named `<source key>-x` becomes `<new key>-x`) unless "
    "`copy_templates` is false. Launch state is not copied: the clone starts open to everyone "
    "at 100 %, as a draft.",
    responses=error_responses({404: "no such journey or version", 409: "the new key is taken"}),
)
async def clone(key: str, body: CloneIn, resources: ResourcesDep) -> JourneyCreatedOut:
    try:
        async with resources.sessions.begin() as session:
            made = await clone_journey(
                session,
                key,
                body.key,
                body.name,
                body.version,
                body.copy_templates,
                {"owner": body.owner, "tags": body.tags, "description": body.description},
            )
            out = await journey_out(session, made.journey)
    except IntegrityError:
        raise Conflict(f"journey {body.key!r} already exists") from None
    return JourneyCreatedOut(
        **out.model_dump(),
        created={
            "templates_created": made.templates_created,
            "templates_reused": made.templates_reused,
            "lists_created": made.lists_created,
            "segments_created": made.segments_created,
        },
    )


def _starter_summary(found: Starter) -> StarterSummary:
    steps = found.journey.get("steps")
    trigger = found.journey.get("trigger")
    return StarterSummary(
        key=found.key,
        name=found.name,
        description=found.description,
        source=found.source,
        tags=found.tags,
        trigger=trigger if isinstance(trigger, dict) else {"type": "api"},
        steps=len(steps) if isinstance(steps, dict) else 0,
        templates=[f"{t.channel}/{t.key}" for t in found.templates],
    )


@router.get(
    "/starters",
    response_model=StarterList,
    summary="Starters: working journeys to begin from",
    description="The seed journeys, the quickstart and the recipes of Benchmark's automation "
    "blog, each with its templates. Create a journey from one with "
    "`POST /v1/journeys?starter=<key>`.",
    responses=error_responses(),
)
async def list_starters() -> StarterList:
    return StarterList(items=[_starter_summary(found) for found in starters().values()])


@router.get(
    "/starters/{key}",
    response_model=StarterOut,
    summary="A starter: its journey, templates and segments",
    responses=error_responses({404: "no such starter"}),
)
async def get_starter(key: str) -> StarterOut:
    found = starter(key)
    return StarterOut(
        **_starter_summary(found).model_dump(),
        journey=found.journey,
        template_contents=[t.model_dump() for t in found.templates],
        segments={k: v.model_dump() for k, v in found.segments.items()},
    )
