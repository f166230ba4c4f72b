"""API keys as the API shows them: never their secret, nor its digest."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from nurture.db.models import ApiKey


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str = Field(description="the first characters of the secret, to tell keys apart")
    created_at: datetime
    last_used_at: datetime | None = Field(
        description="the last request made with it (recorded at most once a minute)"
    )
    revoked_at: datetime | None = Field(description="set once revoked: the key no longer works")
    current: bool = Field(description="the key this request was made with")

    @classmethod
    def of(cls, key: ApiKey, current: uuid.UUID) -> ApiKeyOut:
        return cls(
            id=key.id,
            name=key.name,
            prefix=key.prefix,
            created_at=key.created_at,
            last_used_at=key.last_used_at,
            revoked_at=key.revoked_at,
            current=key.id == current,
        )


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]
