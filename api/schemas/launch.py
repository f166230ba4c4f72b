"""Launching journeys: launch state and counts, version diffs, clones and starters."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictFloat

from nurture.journeys.definition import Email, JourneyTag, Key


class LaunchIn(BaseModel):
    """Only what is given changes."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"audience": "everyone", "rollout_percent": 20}]},
    )

    audience: Literal["everyone", "test_only"] | None = Field(
        default=None, description="test_only: only test contacts enter, for real"
    )
    rollout_percent: StrictFloat | None = Field(
        default=None,
        ge=0,
        le=100,
        description="the share of contacts who would enter that do (a stable hash per contact "
        "and journey); test contacts always enter",
    )


class LaunchCountsOut(BaseModel):
    entered: int = Field(description="distinct contacts enrolled, test contacts not included")
    test_contacts_entered: int
    held_back: int = Field(description="distinct contacts held back and not enrolled since")
    held_back_notes: int = Field(description="how many times a contact was held back")
    kept_out_test_only: int = Field(
        description="distinct contacts refused while the journey was test-only, not enrolled since"
    )


class LaunchOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "journey_key": "win-back",
                    "status": "active",
                    "audience": "everyone",
                    "rollout_percent": 20.0,
                    "counts": {
                        "entered": 198,
                        "test_contacts_entered": 3,
                        "held_back": 802,
                        "held_back_notes": 802,
                        "kept_out_test_only": 0,
                    },
                    "readmit_run": None,
                    "readmit_error": None,
                }
            ]
        }
    )

    journey_key: str
    status: str
    audience: str
    rollout_percent: float
    counts: LaunchCountsOut
    readmit_run: str | None = Field(
        default=None,
        description="the BulkEnroll run re-admitting the segment members this change lets in "
        "(segment-based journeys)",
    )
    readmit_error: str | None = Field(
        default=None, description="why that run could not start: repeat the request"
    )


class DiffChangeOut(BaseModel):
    kind: Literal["added", "removed", "changed"]
    part: Literal["step", "trigger", "entry", "goal", "setting"]
    path: str = Field(description="steps.<id>, trigger, entry.<rule>, goal, or a setting name")
    summary: str = Field(description="the change in words")
    before: JsonValue = None
    after: JsonValue = None
    fields: list[dict[str, JsonValue]] = Field(
        default_factory=list, description="a changed step: each field that changed"
    )


class DiffOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "journey_key": "lead-nurture",
                    "from": "1",
                    "to": "draft",
                    "summary": [
                        "step 'wait_2d' changed: duration '2d' -> '3d'",
                        "step 'reminder' added: send email 'nurture-reminder'",
                    ],
                    "changes": [],
                }
            ]
        },
        populate_by_name=True,
    )

    journey_key: str
    from_: str = Field(alias="from", description="a version number, or draft")
    to: str
    summary: list[str] = Field(description="every change in words, one line each")
    changes: list[DiffChangeOut]


class CloneIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"key": "win-back-2027", "name": "Win back, 2027 edition"}]
        },
    )

    key: Key = Field(description="the new journey's key")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    version: int | None = Field(
        default=None, ge=1, description="clone this published version; none: the draft"
    )
    copy_templates: bool = Field(
        default=True,
        description="copy the templates under the new journey's keys (<key>-<template>); "
        "false: the clone sends the same templates",
    )
    owner: Email | None = None
    tags: list[JourneyTag] | None = None
    description: str | None = None


class StarterSummary(BaseModel):
    key: str
    name: str
    description: str
    source: str
    tags: list[str]
    trigger: dict[str, JsonValue]
    steps: int
    templates: list[str] = Field(description="<channel>/<key> of each template it brings")


class StarterOut(StarterSummary):
    journey: dict[str, JsonValue]
    template_contents: list[dict[str, Any]]
    segments: dict[str, Any]


class StarterList(BaseModel):
    items: list[StarterSummary]


class CreatedFrom(BaseModel):
    """What creating a journey from a starter or a clone made besides the draft."""

    templates_created: list[str]
    templates_reused: list[str] = Field(
        description="templates with the new key existed already and were left as they are"
    )
    lists_created: list[str]
    segments_created: list[str]
