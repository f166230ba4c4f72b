"""Templates: the content a send step names. Minimal for now (no rendering, no versions)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TemplateChannel = Literal["email", "sms"]


class TemplateIn(BaseModel):
    """An email needs a subject and html or text (or both); an SMS needs text only."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "subject": "Welcome aboard",
                    "html": "<p>Hello, and welcome!</p>",
                    "text": "Hello, and welcome!",
                },
                {"text": "Your coupon: WELCOME10"},
            ]
        },
    )

    subject: str | None = Field(default=None, min_length=1, max_length=998)
    html: str | None = Field(default=None, min_length=1)
    text: str | None = Field(default=None, min_length=1)

    def problems(self, channel: TemplateChannel) -> list[dict[str, str]]:
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
    subject: str | None
    updated_at: datetime


class TemplateOut(TemplateSummary):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "channel": "email",
                    "key": "welcome",
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
