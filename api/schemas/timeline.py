"""A contact's timeline: what happened to them and why, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TimelineItem(BaseModel):
    at: datetime
    kind: str = Field(
        description="entered | not_entered | exited | completed | failed | step | message | "
        "open | click | event | change (later rules may add kinds)"
    )
    summary: str = Field(description="what happened and why, in one sentence")
    journey: str | None = Field(description="the journey's key, when it concerns one")
    step: str | None = Field(description="the step's id, when it concerns one")
    reason: str | None = Field(
        description="a stable code: why a message was not sent, why the contact did not "
        "enter or left a journey (see docs/timeline.md)"
    )
    source: str | None = Field(
        description="what made it happen: api, import:<id>, journey:<key>:<step>, "
        "webhook:<provider>, unsubscribe_link, list_joined:<list>, event:<name>..."
    )
    detail: dict[str, Any] = Field(description="the raw ids and values behind the summary")


class TimelinePage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "at": "2026-11-25T08:00:03Z",
                            "kind": "message",
                            "summary": "Email 'second' (journey Promo, step second) not sent: "
                            "the contact is in the journey's exclusion segment 'customers'",
                            "journey": "promo",
                            "step": "second",
                            "reason": "excluded",
                            "source": None,
                            "detail": {
                                "message_id": "9b1e…",
                                "channel": "email",
                                "template": "second",
                                "status": "skipped",
                                "reason": "in exclusion segment customers",
                            },
                        },
                        {
                            "at": "2026-11-24T08:00:00Z",
                            "kind": "entered",
                            "summary": "Entered journey Promo (v2) because they joined list "
                            "newsletter",
                            "journey": "promo",
                            "step": None,
                            "reason": None,
                            "source": "list_joined:newsletter",
                            "detail": {"enrollment_id": "0b7c…", "version": 2},
                        },
                    ],
                    "next": "WyIyMDI2LTExLTI0VDA4OjAwOjAwKzAwOjAwIiwzMCwiMGI3YyJd",
                }
            ]
        }
    )

    items: list[TimelineItem]
    next: str | None = Field(
        description="pass as `before` for the next (older) page; null on the last page"
    )
