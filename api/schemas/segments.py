"""Segments: saved filters over contacts, their counts and previews.

The filter is taken as plain JSON and checked by `nurture.audience.segments` (shape, value types, that
named lists and journeys exist), so every problem comes back as `{path, message}` with a path
into the filter as written, e.g. `filter.conditions.1.value`. The language is described in
docs/segments.md.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from nurture.db.models import Contact, Segment

FILTER_DESCRIPTION = (
    "a filter: `all`/`any` (conditions), `not` (condition), `field`, `tag`, `in_list`, "
    "`consent`, `suppressed`, `event`, `opened`, `clicked`, `enrolled_in`; see docs/segments.md"
)
FILTER_EXAMPLE: dict[str, Any] = {
    "type": "all",
    "conditions": [
        {"type": "field", "field": "fields.plan", "op": "eq", "value": "pro"},
        {"type": "event", "name": "purchase", "min_count": 2, "within_days": 30},
        {"type": "clicked", "channel": "email", "within_days": 30},
        {"type": "not", "condition": {"type": "suppressed", "channel": "email"}},
    ],
}


class SegmentIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "Engaged pro buyers", "filter": FILTER_EXAMPLE}]},
    )

    name: str = Field(min_length=1, max_length=200)
    filter: dict[str, JsonValue] = Field(description=FILTER_DESCRIPTION)


class SegmentOut(BaseModel):
    key: str
    name: str
    filter: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, segment: Segment) -> SegmentOut:
        return cls(
            key=segment.key,
            name=segment.name,
            filter=segment.filter,
            created_at=segment.created_at,
            updated_at=segment.updated_at,
        )


class SegmentPage(BaseModel):
    items: list[SegmentOut]
    limit: int
    offset: int


class CountOut(BaseModel):
    count: int = Field(description="contacts in the segment now")


class PreviewIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"filter": FILTER_EXAMPLE, "limit": 10}]}
    )

    filter: dict[str, JsonValue] = Field(description=FILTER_DESCRIPTION)
    limit: int = Field(default=20, ge=1, le=100)


class MemberOut(BaseModel):
    id: uuid.UUID
    external_id: str | None
    email: str | None
    phone: str | None
    time_zone: str | None
    fields: dict[str, JsonValue]
    tags: list[str]
    consent: dict[str, str]
    created_at: datetime

    @classmethod
    def of(cls, contact: Contact) -> MemberOut:
        return cls(
            id=contact.id,
            external_id=contact.external_id,
            email=contact.email,
            phone=contact.phone,
            time_zone=contact.time_zone,
            fields=contact.fields,
            tags=contact.tags,
            consent=contact.consent,
            created_at=contact.created_at,
        )


class PreviewOut(BaseModel):
    count: int = Field(description="contacts matching now")
    items: list[MemberOut] = Field(description="some of them, newest contacts first")
