"""Enrollments: enroll, unenroll, trace; bulk enrollment of a list."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ContactRef(BaseModel):
    """Name a contact by its id or by your own external id (exactly one)."""

    contact_id: uuid.UUID | None = None
    external_id: str | None = Field(default=None, min_length=1, max_length=255)

    @model_validator(mode="after")
    def _exactly_one(self) -> ContactRef:
        if (self.contact_id is None) == (self.external_id is None):
            raise ValueError("give exactly one of contact_id, external_id")
        return self

    @property
    def contact(self) -> uuid.UUID | str:
        """The contact's id, or its external id (a str), as the services take it."""
        return self.contact_id if self.contact_id is not None else str(self.external_id)


class EnrollRequest(ContactRef):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"journey_key": "benchmark-welcome", "external_id": "crm-1042"}]
        }
    )

    journey_key: str = Field(min_length=1, max_length=64)


class UnenrollRequest(BaseModel):
    reason: str = Field(default="unenrolled", min_length=1, max_length=64)


class PathStep(BaseModel):
    step: str
    type: str
    visit: int
    entered_at: datetime
    left_at: datetime | None
    outcome: str | None


class MessageSummary(BaseModel):
    id: uuid.UUID = Field(description="post opens and clicks to /v1/messages/{id}/engagements")
    step: str | None
    channel: str
    template: str
    status: str = Field(
        description="sending | attempting | sent | skipped | failed | unknown (the worker "
        "died during the provider call, which cannot be asked: see UNCERTAIN_SENDS)"
    )
    reason: str | None
    created_at: datetime


class EnrollmentOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b7c2a4e-5d1f-4f44-9c4e-2d2f3f1c9a10",
                    "journey_key": "benchmark-welcome",
                    "version": 1,
                    "contact_id": "6f1d0c3e-8d0b-4c55-a3a1-1f7c7b1d2e33",
                    "status": "active",
                    "current_step": "wait_1d",
                    "exit_reason": None,
                    "enrolled_at": "2026-11-24T08:00:00Z",
                    "ended_at": None,
                    "workflow_id": "journey:benchmark-welcome:contact:6f1d0c3e-...",
                    "temporal_url": "http://localhost:8233/namespaces/default/workflows/...",
                    "path": [
                        {
                            "step": "welcome",
                            "type": "send_email",
                            "visit": 1,
                            "entered_at": "2026-11-24T08:00:00Z",
                            "left_at": "2026-11-24T08:00:01Z",
                            "outcome": "sent",
                        }
                    ],
                }
            ]
        }
    )

    id: uuid.UUID
    journey_key: str
    version: int
    contact_id: uuid.UUID
    status: str
    current_step: str | None
    exit_reason: str | None
    enrolled_at: datetime
    ended_at: datetime | None
    workflow_id: str
    temporal_url: str = Field(description="this enrollment in the Temporal Web UI")
    path: list[PathStep] | None = Field(
        default=None, description="steps taken, in order (on single-enrollment reads)"
    )
    messages: list[MessageSummary] | None = Field(
        default=None, description="messages this enrollment sent or skipped (single reads)"
    )


class EnrollmentPage(BaseModel):
    items: list[EnrollmentOut]
    limit: int
    offset: int


class BulkEnrollRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"list": "newsletter"}]})

    list: str = Field(min_length=1, max_length=64, description="the key of the list to enroll")


class BulkEnrollmentOut(BaseModel):
    id: uuid.UUID
    journey_key: str
    list_key: str
    status: str = Field(description="running | completed")
    total: int = Field(description="list members when the bulk enrollment started")
    done: int
    enrolled: int
    skipped: int = Field(description="already enrolled, or refused by the entry rules")
    created_at: datetime
    finished_at: datetime | None
