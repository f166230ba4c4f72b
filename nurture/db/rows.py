"""A contact as a lean statement reads it (asyncpg's record), typed like the model where
the readers of a contact need it: journey facts, skip reasons, the render context.

Building a `Contact` model costs more than the statement that read it (SQLAlchemy's instance
state); the worker's hot paths read `ContactRow` instead, and what reads a contact takes either
(`ContactLike`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

_COLUMNS = ("id", "external_id", "email", "phone", "time_zone", "fields", "tags", "consent")


def contact_columns(alias: str = "contacts") -> str:
    """What `ContactRow.of` reads, for a select list: the columns of `contacts` (as `alias`),
    named as they are."""
    return ", ".join(f"{alias}.{name}" for name in _COLUMNS)


class ContactLike(Protocol):
    @property
    def id(self) -> uuid.UUID: ...
    @property
    def external_id(self) -> str | None: ...
    @property
    def email(self) -> str | None: ...
    @property
    def phone(self) -> str | None: ...
    @property
    def time_zone(self) -> str | None: ...
    @property
    def fields(self) -> dict[str, Any]: ...
    @property
    def tags(self) -> list[str]: ...
    @property
    def consent(self) -> dict[str, str]: ...


@dataclass(frozen=True, slots=True)
class ContactRow:
    id: uuid.UUID
    external_id: str | None
    email: str | None
    phone: str | None
    time_zone: str | None
    fields: dict[str, Any]
    tags: list[str]
    consent: dict[str, str]

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> ContactRow:
        """From a record with `contact_columns()` (JSON columns come back parsed)."""
        return cls(
            id=record["id"],
            external_id=record["external_id"],
            email=record["email"],
            phone=record["phone"],
            time_zone=record["time_zone"],
            fields=record["fields"] or {},
            tags=list(record["tags"] or []),
            consent=record["consent"] or {},
        )
