"""Request and response bodies of owner teams, scoring rules, device tokens and the
experiment report (issue 13)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictInt,
    TypeAdapter,
    model_validator,
)

from nurture.journeys.definition import Condition


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OwnerIn(_In):
    name: str = Field(min_length=1, max_length=200)
    email: Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
    weight: StrictInt = Field(default=1, ge=0, le=100, description="weighted teams only")


class TeamIn(_In):
    name: str = Field(min_length=1, max_length=200)
    strategy: Literal["round_robin", "weighted"] = "round_robin"
    owners: list[OwnerIn] = Field(min_length=1, max_length=200)


class OwnerOut(BaseModel):
    name: str
    email: str
    weight: int


class TeamOut(BaseModel):
    key: str
    name: str
    strategy: str
    turn: int = Field(description="assignments made so far")
    owners: list[OwnerOut]


class TeamPage(BaseModel):
    items: list[TeamOut]


class ScoringRuleIn(_In):
    """What earns points: `event` (match: {name, where}), `open`, `click` (match: {link}),
    or `condition` (match: a condition on fields and tags, points held while it holds)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"kind": "event", "match": {"name": "pricing_viewed"}, "points": 10},
                {"kind": "click", "match": {"link": "demo"}, "points": 15, "decay_days": 30},
                {
                    "kind": "condition",
                    "match": {"type": "field", "field": "job_title", "op": "contains",
                              "value": "VP"},
                    "points": 20,
                },
            ]
        },
    )  # fmt: skip

    kind: Literal["event", "open", "click", "condition"]
    match: dict[str, JsonValue] = Field(default_factory=dict)
    points: StrictInt = Field(ge=-1000, le=1000)
    decay_days: StrictInt | None = Field(default=None, ge=1, le=3650)

    @model_validator(mode="after")
    def _match_fits_kind(self) -> ScoringRuleIn:
        if self.kind == "event":
            if not isinstance(self.match.get("name"), str) or not self.match["name"]:
                raise ValueError("an event rule needs match.name")
            unknown = set(self.match) - {"name", "where"}
            if unknown or not isinstance(self.match.get("where", {}), dict):
                raise ValueError("an event rule's match has name and where (an object) only")
        elif self.kind == "open" and self.match:
            raise ValueError("an open rule has no match")
        elif self.kind == "click" and set(self.match) - {"link"}:
            raise ValueError("a click rule's match has link only")
        elif self.kind == "condition":
            TypeAdapter(Condition).validate_python(self.match)
            if self.decay_days is not None:
                raise ValueError("condition points are held while it holds: no decay_days")
        return self


class ScoringRuleOut(BaseModel):
    key: str
    kind: str
    match: dict[str, Any]
    points: int
    decay_days: int | None
    created_at: datetime


class ScoringRulePage(BaseModel):
    items: list[ScoringRuleOut]
    score_field: str = Field(description="the contact field the score is kept in")


class DeviceIn(_In):
    token: str = Field(min_length=1, max_length=4096)
    platform: Literal["android", "ios", "web"] | None = None


class DeviceOut(BaseModel):
    token: str
    platform: str | None
    created_at: datetime


class DevicePage(BaseModel):
    items: list[DeviceOut]


class ArmOut(BaseModel):
    contacts: int
    met_goal: int
    goal_rate: float | None


class ExperimentOut(BaseModel):
    journey_key: str
    holdout_percent: float
    goal: dict[str, JsonValue] | None
    groups: dict[str, ArmOut] = Field(description="treatment and control (the holdout)")
    splits: dict[str, dict[str, ArmOut]] = Field(description="split step -> path -> counts")
