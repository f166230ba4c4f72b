"""New journeys from a working flow: a starter (`nurture/starters/*.json`) or another journey.

A starter is a journey definition with its templates (and the segments it names, if any): the
four seed journeys and the quickstart of `examples/journeys/`, and the recipes of Benchmark's
automation blog (seed 001). Creating a journey from a starter, or cloning one, makes a
**draft** (publish it when ready) and copies its templates under keys of the new journey
(`<journey key>-<template>`), so editing them never changes what another journey sends. The
lists the journey names (its trigger, `add_to_list`, `in_list`...) are created if missing, and
so are the segments a starter brings; nothing existing is overwritten.
"""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from nurture.db.models import (
    ContactList,
    Journey,
    JourneyVersion,
    Segment,
    Template,
    TemplateVersion,
)
from nurture.errors import Conflict, Invalid, NotFound
from nurture.journeys.ordering import in_order
from nurture.journeys.publishing import save_draft

STARTERS_DIR = Path(__file__).resolve().parents[1] / "starters"
_SEND_TYPES = {"send_email": "email", "send_sms": "sms"}
_TEMPLATE_KEY_MAX = 255
_LIST_TYPES = ("list_joined", "add_to_list", "remove_from_list", "in_list")


class StarterTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: str
    key: str
    subject: str | None = None
    html: str | None = None
    text: str | None = None


class StarterSegment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    filter: dict[str, JsonValue]


class Starter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    name: str
    description: str
    source: str = Field(description="where the flow comes from (a seed, a recipe)")
    tags: list[str] = Field(default_factory=list)
    segments: dict[str, StarterSegment] = Field(default_factory=dict)
    journey: dict[str, JsonValue]
    templates: list[StarterTemplate]


@cache
def starters() -> dict[str, Starter]:
    """Every starter shipped with Nurture, by key (read once per process)."""
    found = {}
    for path in sorted(STARTERS_DIR.glob("*.json")):
        starter = Starter.model_validate(json.loads(path.read_text(encoding="utf-8")))
        found[starter.key] = starter
    return found


def starter(key: str) -> Starter:
    found = starters().get(key)
    if found is None:
        raise NotFound(f"no starter {key!r} (GET /v1/starters lists them)")
    return found


@dataclass
class Created:
    journey: Journey
    templates_created: list[str] = field(default_factory=list)  # "<channel>/<key>"
    templates_reused: list[str] = field(default_factory=list)
    lists_created: list[str] = field(default_factory=list)
    segments_created: list[str] = field(default_factory=list)


async def create_from_starter(
    session: AsyncSession,
    starter_key: str,
    key: str,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Created:
    """A new draft journey `key` from a starter, with copies of its templates."""
    chosen = starter(starter_key)
    definition = copy.deepcopy(dict(chosen.journey))
    definition.setdefault("description", chosen.description)
    definition.setdefault("tags", list(chosen.tags))
    contents = {(t.channel, t.key): (t.subject, t.html, t.text) for t in chosen.templates}
    created = await _create(session, definition, key, name, overrides, contents)
    for segment_key, segment in chosen.segments.items():
        inserted = await session.scalar(
            insert(Segment)
            .values(id=uuid.uuid4(), key=segment_key, name=segment.name, filter=segment.filter)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(col(Segment.key))
        )
        if inserted is not None:
            created.segments_created.append(inserted)
    return created


async def clone_journey(
    session: AsyncSession,
    source_key: str,
    key: str,
    name: str | None = None,
    version: int | None = None,
    copy_templates: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Created:
    """A new draft journey `key` from another journey's draft (or one of its versions)."""
    source = await session.scalar(select(Journey).where(col(Journey.key) == source_key))
    if source is None:
        raise NotFound(f"no journey {source_key!r}")
    if version is None:
        definition = in_order(source.draft, source.draft_order)
    else:
        row = await session.scalar(
            select(JourneyVersion).where(
                col(JourneyVersion.journey_id) == source.id, col(JourneyVersion.version) == version
            )
        )
        if row is None:
            raise NotFound(f"journey {source_key!r} has no version {version}")
        definition = in_order(row.definition, row.definition_order)
    definition = copy.deepcopy(definition)
    contents: dict[tuple[str, str], tuple[str | None, str | None, str | None]] | None = None
    if copy_templates:
        wanted = _send_templates(definition)
        rows = await session.scalars(
            select(Template).where(col(Template.key).in_({k for _, k in wanted}))
        )
        contents = {(t.channel, t.key): (t.subject, t.html, t.text) for t in rows}
    return await _create(session, definition, key, name, overrides, contents, source_key)


async def _create(
    session: AsyncSession,
    definition: dict[str, Any],
    key: str,
    name: str | None,
    overrides: dict[str, Any] | None,
    contents: dict[tuple[str, str], tuple[str | None, str | None, str | None]] | None,
    source_key: str | None = None,
) -> Created:
    if await session.scalar(select(Journey.id).where(col(Journey.key) == key)):
        raise Conflict(f"journey {key!r} already exists")
    definition["key"] = key
    if name is not None:
        definition["name"] = name
    for setting, value in (overrides or {}).items():
        if value is not None:
            definition[setting] = value
    renamed: dict[tuple[str, str], str] = {}
    if contents is not None:
        for channel, template in _send_templates(definition):
            renamed[(channel, template)] = _template_key(key, template, source_key)
        for step in _steps(definition):
            sends = _SEND_TYPES.get(step.get("type", ""))
            named = step.get("template")
            if sends and isinstance(named, str):
                step["template"] = renamed[(sends, named)]
    journey = await save_draft(session, definition)
    created = Created(journey=journey)
    for (channel, template), new_key in renamed.items():
        content = contents.get((channel, template)) if contents is not None else None
        if content is None:
            continue  # the source names a template that does not exist: publish will say so
        if await _add_template(session, channel, new_key, content):
            created.templates_created.append(f"{channel}/{new_key}")
        else:
            created.templates_reused.append(f"{channel}/{new_key}")
    for list_key in sorted(named_lists(definition)):
        inserted = await session.scalar(
            insert(ContactList)
            .values(id=uuid.uuid4(), key=list_key, name=list_key.replace("-", " ").capitalize())
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(col(ContactList.key))
        )
        if inserted is not None:
            created.lists_created.append(inserted)
    return created


def _template_key(key: str, template: str, source_key: str | None) -> str:
    """`<journey>-<template>`; a clone's own copies (`<source>-x`) become `<journey>-x`."""
    if source_key is not None and template.startswith(f"{source_key}-"):
        template = template[len(source_key) + 1 :]
    new_key = f"{key}-{template}"
    if len(new_key) > _TEMPLATE_KEY_MAX:
        raise Invalid(
            f"template key {new_key!r} would be longer than {_TEMPLATE_KEY_MAX} characters",
            detail=[{"path": "body.key", "message": "use a shorter journey key"}],
        )
    return new_key


async def _add_template(
    session: AsyncSession,
    channel: str,
    key: str,
    content: tuple[str | None, str | None, str | None],
) -> bool:
    """Create the template (version 1) unless one with this key exists; whether it was new."""
    subject, html, text = content
    template_id = await session.scalar(
        insert(Template)
        .values(id=uuid.uuid4(), channel=channel, key=key, subject=subject, html=html, text=text)
        .on_conflict_do_nothing(index_elements=["key", "channel"])
        .returning(col(Template.id))
    )
    if template_id is None:
        return False
    await session.execute(
        insert(TemplateVersion).values(
            id=uuid.uuid4(),
            template_id=template_id,
            version=1,
            subject=subject,
            html=html,
            text=text,
        )
    )
    return True


def _steps(definition: dict[str, Any]) -> list[dict[str, Any]]:
    steps = definition.get("steps")
    if not isinstance(steps, dict):
        return []
    return [step for step in steps.values() if isinstance(step, dict)]


def _send_templates(definition: dict[str, Any]) -> list[tuple[str, str]]:
    found: dict[tuple[str, str], None] = {}
    for step in _steps(definition):
        channel = _SEND_TYPES.get(step.get("type", ""))
        template = step.get("template")
        if channel and isinstance(template, str):
            found[(channel, template)] = None
    return list(found)


def named_lists(definition: dict[str, Any]) -> set[str]:
    """Every list the journey names: its trigger, list steps and `in_list` conditions."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            names_list = value.get("type") in _LIST_TYPES
            if names_list and isinstance(value.get("list"), str):
                found.add(value["list"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk({k: v for k, v in definition.items() if k in ("trigger", "goal", "steps")})
    return found
