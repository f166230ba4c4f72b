"""Read (never write) what a simulation needs from the database, before it runs: the journey
version or draft, validated as publishing validates it; the templates it sends; the existing
contacts it copies, with their lists, suppressions, device tokens and exclusion-segment
membership; the list keys; the workspace's send rules; the owner teams its assign_owner steps
name. The run itself touches no database at all.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from nurture.audience.suppressions import suppression_reason
from nurture.content.loading import TemplateNotFound, load_template
from nurture.content.rendering import TemplateContent
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    Contact,
    ContactList,
    DeviceToken,
    Journey,
    JourneyVersion,
    ListMembership,
    Segment,
)
from nurture.errors import Invalid, NotFound
from nurture.journeys.definition import AssignOwnerStep, JourneyDefinition, template_references
from nurture.journeys.exclusion import in_exclusion_segment
from nurture.journeys.publishing import latest_version, publishable
from nurture.owners import Team, get_team
from nurture.sending.rules import load_send_rules
from nurture.simulation.report import SimulationReport
from nurture.simulation.runner import Plan, PreparedContact, run_simulation
from nurture.simulation.script import SimulationContact, SimulationRequest, script_problems

# Finds an existing contact by reference (`id:…`, `ext:…`, bare); `where` names the place in
# the request for a malformed one. The API's `find_contact_id` is one.
FindContact = Callable[[AsyncSession, str, str], Awaitable[uuid.UUID | None]]


async def simulate(
    sessions: SessionFactory,
    journey_key: str,
    request: SimulationRequest,
    find_contact: FindContact,
    public_base_url: str,
    version: str | int | None = None,
) -> SimulationReport:
    """Simulate `request` on the journey (`version` overrides the request's)."""
    async with sessions() as session:
        plan = await prepare(session, journey_key, request, find_contact, public_base_url, version)
    return await run_simulation(plan)


async def journey_definition(
    session: AsyncSession, journey_key: str, version: str | int
) -> tuple[JourneyDefinition, str, int]:
    """(definition, version label, version number) of the draft, the live version or a given
    one; a draft is checked as `publish` checks it (422 listing every problem)."""
    journey = await session.scalar(select(Journey).where(col(Journey.key) == journey_key))
    if journey is None:
        raise NotFound(f"no journey {journey_key!r}")
    if version == "draft":
        return await publishable(session, journey.draft), "draft", 0
    if version == "live":
        row = await latest_version(session, journey)
        if row is None:
            raise Invalid(
                f"journey {journey_key!r} has no published version",
                detail=[{"path": "version", "message": "nothing is published: simulate the draft"}],
            )
    else:
        row = await session.scalar(
            select(JourneyVersion).where(
                col(JourneyVersion.journey_id) == journey.id,
                col(JourneyVersion.version) == int(version),
            )
        )
        if row is None:
            raise NotFound(f"journey {journey_key!r} has no version {version}")
    return JourneyDefinition.model_validate(row.definition), str(row.version), row.version


async def prepare(
    session: AsyncSession,
    journey_key: str,
    request: SimulationRequest,
    find_contact: FindContact,
    public_base_url: str,
    version: str | int | None = None,
) -> Plan:
    definition, label, number = await journey_definition(
        session, journey_key, version if version is not None else request.version
    )
    problems = script_problems(request, definition)
    exclusion = definition.entry.exclusion_segment
    existing_segments: set[str] = set()
    if exclusion is not None:
        found = await session.scalar(select(col(Segment.key)).where(col(Segment.key) == exclusion))
        existing_segments = {found} if found else set()
    contacts: list[PreparedContact] = []
    for i, test_contact in enumerate(request.contacts):
        prepared = await _prepared_contact(
            session, i, test_contact, request, find_contact, exclusion, existing_segments, problems
        )
        if prepared is not None:
            contacts.append(prepared)
    if problems:
        raise Invalid("the simulation names what does not exist", detail=problems)
    return Plan(
        journey_key=journey_key,
        version=label,
        version_number=number,
        definition=definition,
        templates=await _templates(session, definition),
        list_keys=set(await session.scalars(select(col(ContactList.key)))),
        existing_segments=existing_segments,
        contacts=contacts,
        horizon=request.horizon,
        public_base_url=public_base_url,
        include_html=request.include_html,
        send_rules=await load_send_rules(session),
        teams=await _teams(session, definition),
        webhooks={step: (r.status, r.json_body) for step, r in request.webhooks.items()},
    )


async def _teams(session: AsyncSession, definition: JourneyDefinition) -> dict[str, Team]:
    """The owner teams the journey's assign_owner steps name, as they are now (their turn
    counter too); a missing one is left out, and its step fails as it would in production."""
    teams = {}
    for step in definition.steps.values():
        if isinstance(step, AssignOwnerStep) and step.team not in teams:
            with contextlib.suppress(NotFound):
                teams[step.team] = await get_team(session, step.team)
    return teams


async def _templates(
    session: AsyncSession, definition: JourneyDefinition
) -> dict[tuple[str, str], TemplateContent]:
    """The current version of each template the journey sends; one deleted since publishing
    is left out, and its send fails as it would in production."""
    found = {}
    for channel, key in sorted(template_references(definition)):
        with contextlib.suppress(TemplateNotFound):
            found[(channel, key)] = await load_template(session, channel, key)
    return found


async def _prepared_contact(
    session: AsyncSession,
    index: int,
    given: SimulationContact,
    request: SimulationRequest,
    find_contact: FindContact,
    exclusion: str | None,
    existing_segments: set[str],
    problems: list[dict[str, Any]],
) -> PreparedContact | None:
    where = f"contacts.{index}.contact"
    lists: list[str] = []
    push_tokens: list[str] = []
    suppressed: dict[str, str] = {}
    segments: set[str] = set()
    if given.contact is not None:
        contact_id = await find_contact(session, given.contact, where)
        stored = await session.get(Contact, contact_id) if contact_id is not None else None
        if stored is None:
            problems.append({"path": where, "message": f"no contact {given.contact!r}"})
            return None
        contact = Contact(
            id=stored.id,
            external_id=stored.external_id,
            email=stored.email,
            phone=stored.phone,
            time_zone=stored.time_zone,
            fields=dict(stored.fields),
            tags=list(stored.tags),
            consent=dict(stored.consent),
        )
        lists = list(
            await session.scalars(
                select(col(ContactList.key))
                .join(ListMembership, col(ListMembership.list_id) == col(ContactList.id))
                .where(col(ListMembership.contact_id) == stored.id)
            )
        )
        push_tokens = list(
            await session.scalars(
                select(col(DeviceToken.token))
                .where(col(DeviceToken.contact_id) == stored.id)
                .order_by(col(DeviceToken.created_at))
            )
        )
        for channel in ("email", "sms", "push"):
            reason = await suppression_reason(session, stored.id, channel)
            if reason is not None:
                suppressed[channel] = reason
        if exclusion in existing_segments and await in_exclusion_segment(
            session, exclusion, stored.id
        ):
            segments.add(exclusion)
    else:
        contact = Contact(id=uuid.uuid4(), fields={}, tags=[], consent={})
    for name in ("email", "phone", "time_zone"):
        if getattr(given, name) is not None:
            setattr(contact, name, getattr(given, name))
    contact.fields = {**contact.fields, **given.fields}
    contact.tags = [*contact.tags, *(t for t in dict.fromkeys(given.tags) if t not in contact.tags)]
    contact.consent = {**contact.consent, **given.consent}
    lists = sorted({*lists, *given.lists})
    push_tokens = list(dict.fromkeys([*push_tokens, *given.push_tokens]))
    segments |= set(given.segments)
    refused = None
    if exclusion is not None:
        if exclusion not in existing_segments:
            refused = "exclusion_segment_missing"
        elif exclusion in segments:
            refused = "excluded"
    return PreparedContact(
        label=given.label or given.contact or f"contact {index + 1}",
        contact=contact,
        lists=lists,
        behaviours=request.behaviour_of(index),
        reference=given.contact,
        suppressed=suppressed,
        segments=segments,
        refused=refused,
        push_tokens=push_tokens,
    )
