"""Templates: the content a send step names, its versions, previews and test sends.

Content is Jinja2, rendered in a sandbox with a fixed context (see nurture.content.rendering
and docs/templates.md)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TemplateChannel = Literal["email", "sms"]


class TemplateIn(BaseModel):
    """An email needs a subject and html or text (or both); an SMS needs text only."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "subject": "Welcome aboard, {{ fields.first_name | default('friend') }}",
                    "html": "<p>Hello {{ fields.first_name | default('there') }}, welcome!</p>"
                    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
                    "text": "Hello {{ fields.first_name | default('there') }}, welcome!\n\n"
                    "Unsubscribe: {{ unsubscribe_url }}",
                },
                {"text": "Your coupon: WELCOME10"},
            ]
        },
    )

    subject: str | None = Field(default=None, min_length=1, max_length=998)
    html: str | None = Field(default=None, min_length=1)
    text: str | None = Field(default=None, min_length=1)

    def problems(self, channel: TemplateChannel) -> list[dict[str, str]]:
        """The parts this channel needs and allows; the route adds the Jinja checks
        (`nurture.content.checks`), so every problem is reported at once."""
        found = []
        if channel == "email":
            if self.subject is None:
                found.append({"path": "body.subject", "message": "an email needs a subject"})
            if self.html is None and self.text is None:
                found.append({"path": "body", "message": "an email needs html or text (or both)"})
        else:
            if self.text is None:
                found.append({"path": "body.text", "message": "an SMS needs text"})
            for name in ("subject", "html"):
                if getattr(self, name) is not None:
                    found.append({"path": f"body.{name}", "message": f"an SMS has no {name}"})
        return found


class TemplateSummary(BaseModel):
    channel: TemplateChannel
    key: str
    version: int = Field(description="the current version; each change of content adds one")
    subject: str | None
    updated_at: datetime


class TemplateOut(TemplateSummary):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "channel": "email",
                    "key": "welcome",
                    "version": 2,
                    "subject": "Welcome aboard",
                    "html": "<p>Hello, and welcome!</p>",
                    "text": "Hello, and welcome!",
                    "created_at": "2026-11-23T17:12:00Z",
                    "updated_at": "2026-11-24T08:00:00Z",
                }
            ]
        }
    )

    html: str | None
    text: str | None
    created_at: datetime


class TemplatePage(BaseModel):
    items: list[TemplateSummary]
    limit: int
    offset: int


class TemplateVersionSummary(BaseModel):
    version: int
    subject: str | None
    created_at: datetime


class TemplateVersionOut(TemplateVersionSummary):
    html: str | None
    text: str | None


class TemplateVersionList(BaseModel):
    items: list[TemplateVersionSummary] = Field(description="every version, oldest first")


class PreviewIn(BaseModel):
    """Whom to render for: a stored contact (`contact_id` or `external_id`), or sample data
    (`email`, `phone`, `time_zone`, `tags`, `fields`; all optional). An empty body renders for
    a contact with no data, which shows what every `default` gives."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"external_id": "crm-1234"},
                {"email": "ada@example.com", "fields": {"first_name": "Ada"}},
            ]
        },
    )

    contact_id: uuid.UUID | None = None
    external_id: str | None = Field(default=None, min_length=1, max_length=255)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=32)
    time_zone: str | None = Field(default=None, max_length=64)
    tags: list[str] | None = None
    fields: dict[str, Any] | None = None
    journey: str | None = Field(
        default=None, max_length=64, description="the key `{{ journey }}` renders as"
    )

    @model_validator(mode="after")
    def _one_source(self) -> PreviewIn:
        # A stored contact and sample data together would be ambiguous: which wins?
        if self.contact_id is not None and self.external_id is not None:
            raise ValueError("give contact_id or external_id, not both")
        if self.names_contact and self.sample_given:
            raise ValueError("give a contact (contact_id or external_id) or sample data, not both")
        return self

    @property
    def names_contact(self) -> bool:
        return self.contact_id is not None or self.external_id is not None

    @property
    def sample_given(self) -> bool:
        sample = (self.email, self.phone, self.time_zone, self.tags, self.fields)
        return any(value is not None for value in sample)


class PreviewOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "subject": "Welcome aboard, Ada",
                    "html": "<p>Hello Ada, welcome!</p>",
                    "text": "Hello Ada, welcome!",
                    "version": 2,
                }
            ]
        }
    )

    subject: str | None
    html: str | None
    text: str | None
    version: int


class TestSendIn(PreviewIn):
    """A preview delivered to `to` through the channel journeys use, subject prefixed
    "[Test] ". Personalised like a preview (a contact or sample data)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"to": "me@example.com", "external_id": "crm-1234"},
                {"to": "+15555550100", "fields": {"first_name": "Ada"}},
            ]
        },
    )

    to: str = Field(
        min_length=3, max_length=320, description="an email address, or an E.164 phone for SMS"
    )


class TestSendOut(BaseModel):
    provider: str
    provider_message_id: str
