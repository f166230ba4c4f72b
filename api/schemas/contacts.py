"""Contacts: people, their fields, tags, consent, lists and enrollments."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StringConstraints,
    field_validator,
    model_validator,
)

from nurture.audience.contacts import Attribute, ContactChanges
from nurture.journeys.definition import FieldName, check_time_zone

EmailAddress = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]
PhoneNumber = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^\+[1-9][0-9]{1,14}$"),
    Field(description="E.164, e.g. +48601234567"),
]
TimeZone = Annotated[str, AfterValidator(check_time_zone), Field(description="an IANA name")]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
ConsentChannel = Literal["email", "sms", "push"]
ConsentChoice = Literal["granted", "revoked"]

# Conditions read these from the contact itself, never from `fields`.
_STANDARD = ("email", "phone", "time_zone")
_ATTRIBUTES: tuple[Attribute, ...] = ("email", "phone", "time_zone")


def _no_standard_names(fields: Mapping[str, JsonValue]) -> Mapping[str, JsonValue]:
    clashing = sorted(set(fields) & set(_STANDARD))
    if clashing:
        raise ValueError(f"{', '.join(clashing)}: set standard attributes at the top level")
    return fields


class _ContactWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailAddress | None = None
    phone: PhoneNumber | None = None
    time_zone: TimeZone | None = None
    consent: dict[ConsentChannel, ConsentChoice] = Field(
        default_factory=dict,
        description="merged channel by channel: a channel left out keeps its recorded choice",
    )

    test: StrictBool | None = Field(
        default=None,
        description="a test contact: enters journeys open to test contacts only, is always in "
        "a canary, and is left out of goal conversion (docs/launching.md); left out: unchanged",
    )

    def _consent(self) -> dict[str, str]:
        return {str(channel): choice for channel, choice in self.consent.items()}

    def _attributes(self) -> dict[Attribute, str | None]:
        return {name: getattr(self, name) for name in _ATTRIBUTES if name in self.model_fields_set}


class ContactUpsert(_ContactWrite):
    """Create or update a contact by your own id. Attributes left out are not changed (on
    create: empty); `fields` and `tags`, when given, replace the stored ones entirely;
    `consent` is merged per channel; `null` clears email, phone or time_zone."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "email": "ada@example.com",
                    "phone": "+48601234567",
                    "time_zone": "Europe/Warsaw",
                    "fields": {"first_name": "Ada", "lifecycle_stage": "lead"},
                    "tags": ["webinar-2026"],
                    "consent": {"email": "granted", "sms": "revoked"},
                }
            ]
        }
    )

    fields: dict[FieldName, JsonValue] = Field(
        default_factory=dict, description="all custom fields; null values are left out"
    )
    tags: list[Tag] = Field(default_factory=list, max_length=200)

    _check_fields = field_validator("fields")(_no_standard_names)

    def changes(self) -> ContactChanges:
        given = self.model_fields_set
        return ContactChanges(
            attributes=self._attributes(),
            replace_fields=self.fields if "fields" in given else None,
            replace_tags=self.tags if "tags" in given else None,
            consent=self._consent(),
            test=self.test,
        )


class ContactPatch(_ContactWrite):
    """Change part of a contact: only what is given changes. `fields` are merged (a `null`
    value removes the field); tags are added and removed; `null` clears email, phone or
    time_zone."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "fields": {"lifecycle_stage": "customer", "trial_ends": None},
                    "add_tags": ["customer"],
                    "remove_tags": ["trial"],
                }
            ]
        }
    )

    fields: dict[FieldName, JsonValue] = Field(
        default_factory=dict, description="merged into the stored fields; null removes a field"
    )
    add_tags: list[Tag] = Field(default_factory=list, max_length=200)
    remove_tags: list[Tag] = Field(default_factory=list, max_length=200)

    _check_fields = field_validator("fields")(_no_standard_names)

    @model_validator(mode="after")
    def _tags_once(self) -> ContactPatch:
        both = sorted(set(self.add_tags) & set(self.remove_tags))
        if both:
            raise ValueError(f"tags both added and removed: {', '.join(both)}")
        return self

    def changes(self) -> ContactChanges:
        return ContactChanges(
            attributes=self._attributes(),
            merge_fields=self.fields,
            add_tags=self.add_tags,
            remove_tags=self.remove_tags,
            consent=self._consent(),
            test=self.test,
        )


class EnrollmentSummary(BaseModel):
    id: uuid.UUID
    journey_key: str
    version: int
    status: str
    current_step: str | None
    exit_reason: str | None
    enrolled_at: datetime


class ContactOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "6f1d0c3e-8d0b-4c55-a3a1-1f7c7b1d2e33",
                    "external_id": "crm-1042",
                    "email": "ada@example.com",
                    "phone": "+48601234567",
                    "time_zone": "Europe/Warsaw",
                    "fields": {"first_name": "Ada", "lifecycle_stage": "lead"},
                    "tags": ["webinar-2026"],
                    "consent": {"email": "granted"},
                    "lists": ["newsletter"],
                    "enrollments": [
                        {
                            "id": "0b7c2a4e-5d1f-4f44-9c4e-2d2f3f1c9a10",
                            "journey_key": "benchmark-welcome",
                            "version": 1,
                            "status": "active",
                            "current_step": "wait_1d",
                            "exit_reason": None,
                            "enrolled_at": "2026-11-24T08:00:00Z",
                        }
                    ],
                    "created_at": "2026-11-24T08:00:00Z",
                    "updated_at": "2026-11-24T08:00:00Z",
                }
            ]
        }
    )

    id: uuid.UUID
    external_id: str | None
    email: str | None
    phone: str | None
    time_zone: str | None
    fields: dict[str, JsonValue]
    tags: list[str]
    consent: dict[str, str]
    test: bool = Field(default=False, description="a test contact (docs/launching.md)")
    lists: list[str] = Field(description="keys of the lists the contact is in")
    enrollments: list[EnrollmentSummary] = Field(
        description="the latest 100 enrollments, newest first (all: GET /v1/enrollments)"
    )
    created_at: datetime
    updated_at: datetime


class ContactPage(BaseModel):
    items: list[ContactOut]
    limit: int
    offset: int
