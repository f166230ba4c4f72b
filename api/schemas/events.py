"""Custom events and engagement (opens, clicks) of messages."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from api.schemas.common import IsoDateTime
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
    occurred_at: IsoDateTime | None = None


class EngagementIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"kind": "click", "link": "purchase"}]}
    )

    kind: Literal["open", "click"]
    link: str | None = Field(default=None, max_length=128, description="the named link clicked")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    occurred_at: IsoDateTime | None = None


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


# SendGrid's largest webhook batch, and what a 1 MB body (settings.max_body_bytes) holds of
# small events.
MAX_BATCH_EVENTS = 1_000


class EventBatchIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {"external_id": "crm-1042", "name": "purchase", "idempotency_key": "o-1"},
                        {"external_id": "crm-2077", "name": "login"},
                    ]
                }
            ]
        }
    )

    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


class EventError(BaseModel):
    error: str = Field(description="the error code POST /v1/events would have answered")
    detail: JsonValue


class EventBatchResult(BaseModel):
    index: int = Field(description="the event's position in the request, from 0")
    status: int = Field(
        description="what POST /v1/events would have answered for this event alone: 202 "
        "(recorded, or a repeated idempotency key), 404 (unknown contact), 409 (the key "
        "belongs to another event), 413 (properties over the size limits)"
    )
    event: EventOut | None = None
    error: EventError | None = None


class EventBatchOut(BaseModel):
    recorded: int = Field(description="events stored by this request")
    duplicates: int = Field(description="events whose idempotency key was seen before")
    failed: int = Field(description="events not recorded (see each result's error)")
    results: list[EventBatchResult] = Field(description="one per event, in the request's order")
