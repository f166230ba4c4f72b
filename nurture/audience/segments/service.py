"""Saved segments, and the queries every use of a filter comes down to.

A segment stores only its filter; membership is computed when asked, so it is never stale
(segments that start journeys also keep their members as last seen, to tell who entered:
`nurture.audience.segments.membership`).
`members_query` is the one query the others are built on: a select of contact ids, in id
order, that a batch enroller pages through by keyset (`after`), and `contains` re-checks one
contact (for "segment entered" triggers and exclusion segments).

Filters are checked when saved and when previewed: their shape (pydantic), their values
against field types (the compiler), and that the lists, journeys and templates they name
exist. A list deleted after saving simply matches nobody.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col, select

from nurture.audience.segments.compiler import FieldType, compile_filter, references
from nurture.audience.segments.definition import FILTER, Filter, dump
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    Contact,
    ContactList,
    Journey,
    JourneyStatus,
    JourneyVersion,
    Segment,
    Template,
    utcnow,
)
from nurture.errors import Conflict, Invalid, NotFound
from nurture.nesting import MAX_CONDITION_DEPTH, MAX_JSON_DEPTH, conditions_too_deep, too_deep

PREVIEW_LIMIT = 100


def parse_filter(data: Any, path: str = "filter") -> Filter:
    """A filter from JSON data (a stored segment, a request); `Invalid` says where it is wrong."""
    # Before pydantic (and the compiler, which recurses too): see nurture.nesting.
    if (deep := too_deep(data, path=path)) is not None:
        message = f"nested more than {MAX_JSON_DEPTH} objects and arrays deep"
        raise Invalid("the segment filter is invalid", detail=[{"path": deep, "message": message}])
    if (deep := conditions_too_deep(data, path=path)) is not None:
        message = f"conditions (all, any, not) nested more than {MAX_CONDITION_DEPTH} deep"
        raise Invalid("the segment filter is invalid", detail=[{"path": deep, "message": message}])
    try:
        return FILTER.validate_python(data)
    except ValidationError as err:
        problems = [
            {
                "path": ".".join([path, *_json_path(data, e["loc"])]),
                "message": str(e["msg"]).removeprefix("Value error, "),
            }
            for e in err.errors()
        ]
        raise Invalid("the segment filter is invalid", detail=problems) from None


def _json_path(data: Any, loc: Sequence[int | str]) -> list[str]:
    """Pydantic's error location without the union tags it inserts ("conditions.1.field.op"
    becomes "conditions.1.op"), so the path can be followed in the JSON as written."""
    parts: list[str] = []
    for part in loc:
        tag = isinstance(data, Mapping) and isinstance(part, str) and data.get("type") == part
        if tag and not isinstance(data.get(part), Mapping | list):
            continue  # the union tag pydantic inserts, not a key of this object
        parts.append(str(part))
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            data = None
    return parts


async def check_filter(
    session: AsyncSession,
    filter: Filter,
    field_types: Mapping[str, FieldType] | None = None,
    path: str = "filter",
) -> ColumnElement[bool]:
    """Compile the filter and check that what it names exists; every problem in one `Invalid`."""
    problems: list[dict[str, str]] = []
    try:
        expression = compile_filter(filter, field_types=field_types, path=path)
    except Invalid as invalid:
        problems.extend(invalid.detail)
        expression = sa.false()
    named = list(references(filter, path))
    tables: dict[str, Any] = {"list": ContactList, "journey": Journey, "template": Template}
    for kind, table in tables.items():
        wanted = {ref.key for ref in named if ref.kind == kind}
        if not wanted:
            continue
        found = set(await session.scalars(select(table.key).where(col(table.key).in_(wanted))))
        problems.extend(
            {"path": ref.path, "message": f"no {kind} {ref.key!r}"}
            for ref in named
            if ref.kind == kind and ref.key not in found
        )
    if problems:
        raise Invalid("the segment filter is invalid", detail=problems)
    return expression


def condition(filter: Filter | Segment) -> ColumnElement[bool]:
    """The filter as a WHERE condition on `contacts`."""
    if isinstance(filter, Segment):
        filter = parse_filter(filter.filter)
    return compile_filter(filter)


# --- the queries ---------------------------------------------------------------------------


def members_query(filter: Filter | Segment, after: uuid.UUID | None = None) -> sa.Select[Any]:
    """`SELECT contacts.id ... ORDER BY id`: the members, for keyset pagination.

    Page with `after` (the last id of the previous page) and `.limit(n)`; ids are ordered by
    the primary key, so each page is an index range scan whatever the page number. Time
    windows ("in the last 30 days") are evaluated against the database's `now()` at each
    page, so a contact may leave or join between pages of a long run."""
    query = select(col(Contact.id)).where(condition(filter)).order_by(col(Contact.id))
    if after is not None:
        query = query.where(col(Contact.id) > after)
    return query


async def count(session: AsyncSession, filter: Filter | Segment) -> int:
    total = await session.scalar(
        select(sa.func.count()).select_from(Contact).where(condition(filter))
    )
    return int(total or 0)


async def preview(
    session: AsyncSession, filter: Filter | Segment, limit: int = 20
) -> list[Contact]:
    """Some members, newest contacts first (the ones a marketer is likeliest to recognise)."""
    rows = await session.scalars(
        select(Contact)
        .where(condition(filter))
        .order_by(col(Contact.created_at).desc(), col(Contact.id))
        .limit(min(max(limit, 1), PREVIEW_LIMIT))
    )
    return list(rows)


async def contains(session: AsyncSession, segment: Filter | Segment, contact_id: uuid.UUID) -> bool:
    """Is this contact in the segment now? One indexed lookup plus the filter's subqueries."""
    found = await session.scalar(
        select(col(Contact.id)).where(col(Contact.id) == contact_id, condition(segment))
    )
    return found is not None


# --- saved segments ------------------------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    segment: Segment
    created: bool


async def put_segment(
    sessions: SessionFactory, key: str, name: str, filter: Filter | Mapping[str, Any]
) -> Saved:
    """Create the segment with this key or replace its name and filter (a checked filter)."""
    parsed = parse_filter(filter) if isinstance(filter, Mapping) else filter
    now = utcnow()
    async with sessions.begin() as session:
        await check_filter(session, parsed)
        # One statement, so two concurrent PUTs of a new key cannot both insert; `xmax = 0`
        # is Postgres's tell that the row was inserted rather than updated.
        row = (
            await session.execute(
                insert(Segment)
                .values(
                    id=uuid.uuid4(),
                    key=key,
                    name=name,
                    filter=dump(parsed),
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_update(
                    index_elements=[col(Segment.key)],
                    set_={"name": name, "filter": dump(parsed), "updated_at": now},
                )
                .returning(col(Segment.id), sa.literal_column("xmax = 0", sa.Boolean()))
            )
        ).one()
        segment = await session.get(Segment, row[0], populate_existing=True)
    assert segment is not None
    return Saved(segment, bool(row[1]))


async def get_segment(session: AsyncSession, key: str) -> Segment:
    segment = await session.scalar(select(Segment).where(col(Segment.key) == key))
    if segment is None:
        raise NotFound(f"no segment {key!r}")
    return segment


async def list_segments(session: AsyncSession, limit: int = 100, offset: int = 0) -> list[Segment]:
    rows = await session.scalars(
        select(Segment).order_by(col(Segment.key)).limit(limit).offset(offset)
    )
    return list(rows)


async def delete_segment(sessions: SessionFactory, key: str) -> None:
    """Delete a segment that no journey needs; `Conflict` names the journeys that do."""
    async with sessions.begin() as session:
        segment = await session.scalar(
            select(Segment).where(col(Segment.key) == key).with_for_update()
        )
        if segment is None:
            raise NotFound(f"no segment {key!r}")
        users = await journeys_using(session, key)
        if users:
            raise Conflict(
                f"segment {key!r} is used by journey(s) {', '.join(users)} (trigger or "
                "exclusion segment): archive them or publish them without it first"
            )
        await session.delete(segment)


async def journeys_using(session: AsyncSession, key: str) -> list[str]:
    """Journeys not archived whose published versions start on this segment or keep its
    members out. Any version counts, not only the latest: contacts still running an older
    version check its exclusion segment before every send."""
    definition = col(JourneyVersion.definition)
    rows = await session.scalars(
        select(col(Journey.key))
        .join(JourneyVersion, col(JourneyVersion.journey_id) == col(Journey.id))
        .where(
            col(Journey.status) != JourneyStatus.ARCHIVED,
            sa.or_(
                definition["trigger"]["segment"].astext == key,
                definition["entry"]["exclusion_segment"].astext == key,
            ),
        )
        .distinct()
        .order_by(col(Journey.key))
    )
    return list(rows)


def stored_filter(segment: Segment) -> Filter:
    return parse_filter(segment.filter)


__all__: Sequence[str] = (
    "check_filter",
    "condition",
    "contains",
    "count",
    "delete_segment",
    "get_segment",
    "journeys_using",
    "list_segments",
    "members_query",
    "parse_filter",
    "preview",
    "put_segment",
    "stored_filter",
)
