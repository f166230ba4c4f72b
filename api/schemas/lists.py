"""Static lists: create them, add and remove members."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from nurture.journeys.definition import Key


class ListIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"key": "newsletter", "name": "Newsletter"}]},
    )

    key: Key = Field(description="lower case letters, digits, `_` and `-`; at most 64")
    name: str = Field(min_length=1, max_length=200)


class ListOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "key": "newsletter",
                    "name": "Newsletter",
                    "member_count": 1250,
                    "created_at": "2026-11-24T08:00:00Z",
                }
            ]
        }
    )

    key: str
    name: str
    member_count: int
    created_at: datetime


class ListPage(BaseModel):
    items: list[ListOut]
    limit: int
    offset: int


class MembersIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"contact_ids": ["6f1d0c3e-8d0b-4c55-a3a1-1f7c7b1d2e33"]}]},
    )

    contact_ids: list[uuid.UUID] = Field(min_length=1, max_length=1000)


class MembersAddedOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "added": ["6f1d0c3e-8d0b-4c55-a3a1-1f7c7b1d2e33"],
                    "already_members": [],
                    "enrollments_started": ["0b7c2a4e-5d1f-4f44-9c4e-2d2f3f1c9a10"],
                }
            ]
        }
    )

    added: list[uuid.UUID] = Field(description="contacts that joined the list now")
    already_members: list[uuid.UUID] = Field(description="unchanged; no journey starts for them")
    enrollments_started: list[uuid.UUID] = Field(
        description="enrollments in journeys triggered by joining this list (one already in "
        "flight for the contact is given as is)"
    )


class MemberOut(BaseModel):
    contact_id: uuid.UUID
    external_id: str | None
    email: str | None
    added_at: datetime


class MemberPage(BaseModel):
    items: list[MemberOut]
    next_after: uuid.UUID | None = Field(description="pass as `after` for the next page")
