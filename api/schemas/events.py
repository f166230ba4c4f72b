"""Custom events and engagement (opens, clicks) of messages."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from api.schemas.enrollments import ContactRef


class EventIn(ContactRef):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "external_id": "crm-1042",
                    "name": "purchase",
                    "idempotency_key": "order-88125",
                    "properties": {"total": 129.0, "currency": "EUR"},
                }
            ]
        }
    )

    name: str = Field(min_length=1, max_length=128)
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="repeat a request with the same key and it is recorded once",
    )
    properties: dict[str, JsonValue] = Field(default_factory=dict)
    occurred_at: datetime | None = None


class EngagementIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"kind": "click", "link": "purchase"}]}
    )

    kind: Literal["open", "click"]
    link: str | None = Field(default=None, max_length=128, description="the named link clicked")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    occurred_at: datetime | None = None


class EventOut(BaseModel):
    id: uuid.UUID
    kind: str
    name: str | None
    contact_id: uuid.UUID | None
    duplicate: bool = Field(description="this idempotency key was seen before")
    signalled: int = Field(description="in-flight enrollments the event was delivered to")
    started_enrollments: list[uuid.UUID] = Field(
        default_factory=list, description="enrollments this event started (event triggers)"
    )
