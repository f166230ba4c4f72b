"""Frequency caps: rolling windows per contact and channel ("sms at most 2 per 24 h").

`cap_verdict` is the pure decision for one instant over the claims already made (their times);
`activities/messaging.py` reads those claims under a lock in the send's own transaction (see
`nurture.sending.gate`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nurture.journeys.durations import Duration, format_duration
from nurture.sending.windows import Channel

# The longest window a cap may have: claims older than this never count again.
MAX_CAP_WINDOW = timedelta(days=31)


class FrequencyCap(BaseModel):
    """At most `max` sends on `channel` to one contact in any window of length `per`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: Channel
    max: int = Field(ge=1, le=1000)
    per: Duration = Field(examples=["24h"])

    @field_validator("per")
    @classmethod
    def _window(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("the window must be positive, e.g. '24h'")
        if value > MAX_CAP_WINDOW:
            raise ValueError(f"the window may be at most {format_duration(MAX_CAP_WINDOW)}")
        return value

    def label(self) -> str:
        """`sms 2/1d`: how paths, skip reasons and timer summaries name it."""
        return f"{self.channel} {self.max}/{format_duration(self.per)}"


@dataclass(frozen=True)
class CapVerdict:
    cap: FrequencyCap
    allowed_at: datetime  # the first instant the cap allows another send

    def words(self) -> str:
        return f"frequency cap {self.cap.label()}"


def cap_verdict(
    caps: Sequence[FrequencyCap], channel: str, at: datetime, claims: Sequence[datetime]
) -> CapVerdict | None:
    """None when a send on `channel` at `at` fits every cap, given the times of the claims
    already made (any order); else the cap that stops it and when the last of them allows it.

    A window is (at - per, at]: a claim made exactly `per` ago no longer counts."""
    worst: CapVerdict | None = None
    for cap in caps:
        if cap.channel != channel:
            continue
        counted = sorted((t for t in claims if t > at - cap.per), reverse=True)
        if len(counted) >= cap.max:
            # The window must lose all but max - 1 of them: the max-th newest has to leave it.
            allowed_at = counted[cap.max - 1] + cap.per
            if worst is None or allowed_at > worst.allowed_at:
                worst = CapVerdict(cap, allowed_at)
    return worst


def longest_window(caps: Sequence[FrequencyCap], channel: str) -> timedelta | None:
    windows = [cap.per for cap in caps if cap.channel == channel]
    return max(windows) if windows else None
