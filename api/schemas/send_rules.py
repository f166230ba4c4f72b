"""Bodies of /v1/send-rules: the rules are `nurture.sending.rules.SendRules` itself."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class HoldCount(BaseModel):
    rule: str  # quiet_hours | frequency_cap | expired
    action: str  # held | delayed | skipped
    channel: str
    count: int


class HoldCounts(BaseModel):
    since: datetime | None
    until: datetime | None
    journey: str | None
    counts: list[HoldCount]
