"""Drafts and published versions. A published version is never modified, only superseded."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from nurture.audience.segments.membership import starts_on_entry, watch_segment
from nurture.content.checks import template_problems
from nurture.db.models import Journey, JourneyStatus, JourneyVersion, Segment, Template, utcnow
from nurture.errors import Conflict, Invalid, NotFound
from nurture.journeys.definition import (
    EventTrigger,
    JourneyDefinition,
    Key,
    ListJoinedTrigger,
    SegmentEnteredTrigger,
    SegmentTrigger,
    SendEmailStep,
    SendSmsStep,
)
from nurture.journeys.ordering import capture, in_order, restore
from nurture.journeys.validation import InvalidJourney, validate_journey
from nurture.nesting import (
    MAX_DEFINITION_BYTES,
    MAX_JSON_DEPTH,
    definition_problems,
    json_bytes,
    too_deep,
)
from nurture.owners import team_problems


async def publishable(session: AsyncSession, data: dict[str, Any]) -> JourneyDefinition:
    """The definition `publish` would store, or `Invalid` listing every problem at once: those
    of the definition itself and, whenever it can be parsed, its templates: missing, or
    with problems (`nurture.content.checks.template_problems`)."""
    problems: list[dict[str, str]] = []
    parsed: JourneyDefinition | None
    try:
        parsed = validate_journey(data)
    except InvalidJourney as err:
        problems = [{"path": p.path, "message": p.message} for p in err.problems]
        try:  # graph problems: the shape is right, so its templates can still be checked
            parsed = None if definition_problems(data) else JourneyDefinition.model_validate(data)
        except ValidationError:
            parsed = None
    missing, broken = await _template_problems(session, parsed) if parsed is not None else ([], [])
    content = missing + broken
    audience = await _segment_problems(session, parsed) if parsed is not None else []
    teams = await team_problems(session, parsed) if parsed is not None else []
    if problems:
        raise Invalid("the journey definition is invalid", detail=problems + content + audience)
    if audience:
        raise Invalid(
            "the audience is not ready: create the missing segments first",
            detail=audience + content,
        )
    if teams:
        raise Invalid(
            "owner teams are missing: create them first (PUT /v1/owner-teams/{key})",
            detail=teams + content,
        )
    if broken:
        raise Invalid("content is not ready: fix the templates listed first", detail=content)
    if missing:
        raise Invalid("content is not ready: create the missing templates first", detail=missing)
    assert parsed is not None  # no problems: validate_journey returned it
    return parsed


class _DraftHeader(BaseModel):
    """All a draft needs to be saved: work in progress may be incomplete or invalid."""

    model_config = ConfigDict(extra="allow")
    key: Key
    name: str = Field(min_length=1, max_length=200)


async def save_draft(
    session: AsyncSession, data: dict[str, Any], *, key: str | None = None
) -> Journey:
    """Create or replace a journey's draft; only `key` and `name` are checked here.

    `validate_journey` (and `publish`) report everything else, so a marketer can save a
    half-built journey and come back to it.
    """
    # A draft may be invalid, but not too deep or too big to store and send back.
    if (deep := too_deep(data)) is not None:
        raise Invalid(
            "the draft is nested too deep",
            detail=[{"path": deep, "message": f"nested more than {MAX_JSON_DEPTH} deep"}],
        )
    size = json_bytes(data)
    if size is not None and size > MAX_DEFINITION_BYTES:
        raise Invalid(
            "the draft is too big",
            detail=[
                {
                    "path": "",
                    "message": f"{size} bytes as JSON, over the limit of {MAX_DEFINITION_BYTES}",
                }
            ],
        )
    try:
        header = _DraftHeader.model_validate(data)
    except ValidationError as err:
        raise Invalid(
            "a draft needs a key and a name",
            detail=[
                {"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                for e in err.errors(include_url=False)
            ],
        ) from None
    if key is not None and header.key != key:
        raise Invalid(f"the draft's key {header.key!r} does not match the journey {key!r}")
    journey = await session.scalar(select(Journey).where(col(Journey.key) == header.key))
    if journey is None:
        journey = Journey(key=header.key, name=header.name)
        session.add(journey)
    elif journey.status == JourneyStatus.ARCHIVED:
        raise Conflict(f"journey {header.key!r} is archived")
    journey.name = header.name
    journey.draft = dict(data)
    journey.draft_order = capture(data)  # jsonb sorts keys: keep the order as written
    describe(journey, data)
    journey.updated_at = utcnow()
    await session.flush()
    return journey


def describe(journey: Journey, data: dict[str, Any]) -> None:
    """Copy what the draft says about the journey (owner, target tags, description) to the
    columns the journey list filters on; publishing validates them, a draft may be rough."""
    owner, tags, description = data.get("owner"), data.get("tags"), data.get("description")
    journey.owner = owner[:320] if isinstance(owner, str) and owner else None
    journey.tags = (
        list(dict.fromkeys(t for t in tags if isinstance(t, str) and t))
        if isinstance(tags, list)
        else []
    )
    journey.description = description if isinstance(description, str) else None


async def publish(session: AsyncSession, key: str) -> JourneyVersion:
    """Validate the draft and store it as the next immutable version; the journey goes active."""
    journey = await session.scalar(select(Journey).where(col(Journey.key) == key).with_for_update())
    if journey is None:
        raise NotFound(f"no journey {key!r}")
    if journey.status == JourneyStatus.ARCHIVED:
        raise Conflict(f"journey {key!r} is archived")
    written = in_order(journey.draft, journey.draft_order)
    definition = await publishable(session, written)
    latest = await session.scalar(
        select(func.max(JourneyVersion.version)).where(col(JourneyVersion.journey_id) == journey.id)
    )
    previous = await latest_version(session, journey)  # the live version this one replaces
    dumped = definition.model_dump(mode="json")
    version = JourneyVersion(
        journey_id=journey.id,
        version=(latest or 0) + 1,
        definition=dumped,
        # Read back in the draft's order; defaults the draft left out come after.
        definition_order=capture(restore(dumped, capture(written))),
    )
    session.add(version)
    if journey.status == JourneyStatus.DRAFT:
        journey.status = JourneyStatus.ACTIVE
    journey.trigger_type, journey.trigger_key = trigger_index(definition)
    journey.published_at = journey.updated_at = utcnow()
    # HubSpot: removing all goal criteria resets the goal counts, editing them does not.
    if definition.goal is None and previous is not None and previous.definition.get("goal"):
        journey.goal_reset_at = journey.published_at
    await session.flush()
    entered = starts_on_entry(definition)
    if entered is not None:
        # Today's members are already in: from now on, only contacts who enter start it.
        await watch_segment(session, entered)
    return version


def trigger_index(definition: JourneyDefinition) -> tuple[str, str | None]:
    """What the journeys table indexes about a trigger: its type and the list/segment/event."""
    trigger = definition.trigger
    match trigger:
        case ListJoinedTrigger():
            return trigger.type, trigger.list
        case SegmentEnteredTrigger() | SegmentTrigger():
            return trigger.type, trigger.segment
        case EventTrigger():
            return trigger.type, trigger.name
    return trigger.type, None


async def _segment_problems(
    session: AsyncSession, definition: JourneyDefinition
) -> list[dict[str, str]]:
    """The segments the journey names (trigger, exclusion) that do not exist: a journey must
    not go live with an audience, or an exclusion, that means nobody."""
    named: list[tuple[str, str]] = []
    trigger = definition.trigger
    if isinstance(trigger, SegmentEnteredTrigger | SegmentTrigger):
        named.append(("trigger.segment", trigger.segment))
    if definition.entry.exclusion_segment is not None:
        named.append(("entry.exclusion_segment", definition.entry.exclusion_segment))
    if not named:
        return []
    existing = set(
        await session.scalars(
            select(col(Segment.key)).where(col(Segment.key).in_([key for _, key in named]))
        )
    )
    return [
        {"path": path, "message": f"no segment {key!r}"}
        for path, key in named
        if key not in existing
    ]


async def _template_problems(
    session: AsyncSession, definition: JourneyDefinition
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Dynamics' rule: content must be ready before a journey is published. Each send step's
    template must exist and pass `template_problems` too: one saved before those checks, or
    written to the table directly, would otherwise fail (or render wrongly) at send time.

    Returns (missing templates, problems of existing ones), each `{path, message}` with the
    step's path: `steps.<step>.template`."""
    wanted: dict[str, tuple[str, str]] = {}
    for step_id, step in definition.steps.items():
        if isinstance(step, SendEmailStep | SendSmsStep):
            channel = "email" if isinstance(step, SendEmailStep) else "sms"
            wanted[step_id] = (channel, step.template)
    if not wanted:
        return [], []
    keys = {key for _, key in wanted.values()}
    rows = await session.scalars(select(Template).where(col(Template.key).in_(keys)))
    # Checked once per template, however many steps send it.
    found = {
        (t.channel, t.key): template_problems(t.channel, t.subject, t.html, t.text) for t in rows
    }
    missing, broken = [], []
    for step_id, (channel, key) in wanted.items():
        path = f"steps.{step_id}.template"
        if (channel, key) not in found:
            missing.append({"path": path, "message": f"no {channel} template {key!r}"})
        for problem in found.get((channel, key), []):
            where = f"{problem['path']}: " if problem["path"] else ""
            message = f"{channel} template {key!r}: {where}{problem['message']}"
            broken.append({"path": path, "message": message})
    return missing, broken


async def latest_version(session: AsyncSession, journey: Journey) -> JourneyVersion | None:
    return await session.scalar(
        select(JourneyVersion)
        .where(col(JourneyVersion.journey_id) == journey.id)
        .order_by(col(JourneyVersion.version).desc())
        .limit(1)
    )
