"""Journeys: drafts, validation, published versions, status."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ModelWrapValidatorHandler,
    PrivateAttr,
    model_validator,
)

from nurture.db.models import JourneyStatus
from nurture.journeys.definition import Key

EXAMPLE_DEFINITION: dict[str, Any] = {
    "key": "lead-nurture",
    "name": "Lead nurturing until the lead becomes a customer",
    "trigger": {"type": "api"},
    "goal": {
        "name": "became a customer",
        "criteria": {"type": "field", "field": "lifecycle_stage", "op": "eq", "value": "customer"},
    },
    "start": "intro",
    "steps": {
        "intro": {"type": "send_email", "template": "nurture-intro", "next": "wait_2d"},
        "wait_2d": {"type": "wait", "duration": "2d", "next": "case_study"},
        "case_study": {"type": "send_email", "template": "nurture-case-study"},
    },
}


class JourneyDraftIn(BaseModel):
    """A journey definition (see docs/journeys.md). A draft may be incomplete or invalid: only
    `key` and `name` are needed to save it; validate and publish report everything else."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [EXAMPLE_DEFINITION]})

    key: Key = Field(description="lower case letters, digits, `_` and `-`; at most 64")
    name: str = Field(min_length=1, max_length=200)
    # The body's own key order: `key` and `name` stay where they were written.
    _order: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        model = handler(data)
        if isinstance(data, dict):
            model._order = list(data)
        return model

    def definition(self) -> dict[str, Any]:
        dumped = self.model_dump(mode="json")
        written = [key for key in self._order if key in dumped]
        return {key: dumped[key] for key in [*written, *(k for k in dumped if k not in written)]}


class VersionSummary(BaseModel):
    version: int
    published_at: datetime


class VersionOut(BaseModel):
    """A published, immutable version: what contacts enrolled in it run."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "journey_key": "lead-nurture",
                    "version": 2,
                    "published_at": "2026-11-24T08:00:00Z",
                    "definition": EXAMPLE_DEFINITION,
                }
            ]
        }
    )

    journey_key: str
    version: int
    published_at: datetime
    definition: dict[str, JsonValue]


class JourneySummary(BaseModel):
    key: str
    name: str
    status: JourneyStatus = Field(description="draft | active | paused | archived")
    live_version: int | None = Field(description="the version new enrollments get; none yet")
    trigger_type: str | None = Field(description="the live version's trigger")
    trigger_key: str | None = Field(description="its list, segment or event name")
    published_at: datetime | None
    created_at: datetime
    updated_at: datetime
    owner: str | None = Field(default=None, description="the owner's email, from the draft")
    tags: list[str] = Field(default_factory=list, description="target tags, from the draft")
    description: str | None = Field(default=None, description="from the draft")
    audience: str = Field(
        default="everyone", description="everyone | test_only (GET .../launch for counts)"
    )
    rollout_percent: float = Field(default=100.0, description="the canary share admitted")


class JourneyOut(JourneySummary):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "key": "lead-nurture",
                    "name": "Lead nurturing until the lead becomes a customer",
                    "status": "active",
                    "live_version": 1,
                    "trigger_type": "api",
                    "trigger_key": None,
                    "published_at": "2026-11-24T08:00:00Z",
                    "created_at": "2026-11-23T17:12:00Z",
                    "updated_at": "2026-11-24T08:00:00Z",
                    "draft": EXAMPLE_DEFINITION,
                    "versions": [{"version": 1, "published_at": "2026-11-24T08:00:00Z"}],
                    "live": {
                        "journey_key": "lead-nurture",
                        "version": 1,
                        "published_at": "2026-11-24T08:00:00Z",
                        "definition": EXAMPLE_DEFINITION,
                    },
                }
            ]
        }
    )

    draft: dict[str, JsonValue] = Field(description="the editable draft, as last saved")
    versions: list[VersionSummary] = Field(description="every published version, oldest first")
    live: VersionOut | None = Field(description="the latest published version, if any")


class JourneyPage(BaseModel):
    items: list[JourneySummary]
    limit: int
    offset: int


class ValidationOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"valid": True}]})

    valid: Literal[True]


class JourneyStatusOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"key": "lead-nurture", "status": "paused", "enrollments_signalled": 1250}]
        }
    )

    key: str
    status: JourneyStatus
    enrollments_signalled: int = Field(
        description="in-flight enrollments told of the change (0 for archive, which tells none)"
    )


class GoalConversionOut(BaseModel):
    """A journey's goal conversion, counted as HubSpot counts workflow goals."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "journey_key": "lead-nurture",
                    "goal": EXAMPLE_DEFINITION["goal"],
                    "counting_since": None,
                    "enrolled": 1200,
                    "sent_marketing_email": 1150,
                    "met_goal_while_enrolled": 140,
                    "met_goal_after": 35,
                    "converted": 170,
                    "conversion_rate": 0.1417,
                    "not_enrolled_goal_already_met": 80,
                }
            ]
        }
    )

    journey_key: str
    goal: dict[str, JsonValue] | None = Field(
        description="the live version's goal; none if it has none"
    )
    counting_since: datetime | None = Field(
        description="when the goal was last removed: only enrollments since then count; none "
        "means the whole history (editing the goal does not reset the counts)"
    )
    enrolled: int = Field(
        description="distinct contacts enrolled (those refused at entry are not counted)"
    )
    sent_marketing_email: int = Field(description="of those, contacts sent an email by it")
    met_goal_while_enrolled: int = Field(description="contacts that left with `goal_met`")
    met_goal_after: int = Field(
        description="other contacts whose enrollment ended and who meet the current goal now"
    )
    converted: int = Field(description="contacts that met the goal and were sent an email")
    conversion_rate: float | None = Field(description="converted / enrolled; none when 0 enrolled")
    not_enrolled_goal_already_met: int = Field(
        description="contacts not enrolled because they already met the goal; not in the rate"
    )


class JourneyCreatedOut(JourneyOut):
    """A journey just created: from a definition, a starter or another journey."""

    created: dict[str, list[str]] | None = Field(
        default=None,
        description="from a starter or a clone: templates_created, templates_reused (keys "
        "that existed already), lists_created, segments_created",
    )
