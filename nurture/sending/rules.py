"""The workspace's send rules and their store (one row of `send_rules`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from nurture.db.models import WorkspaceSendRules, utcnow
from nurture.journeys.definition import TimeZone
from nurture.journeys.durations import format_duration
from nurture.sending.caps import FrequencyCap
from nurture.sending.windows import QuietHours


class SendRules(BaseModel):
    """Rules every journey's sends follow (docs/send-rules.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time_zone: TimeZone = Field(
        default="UTC",
        description="for quiet hours of contacts with no time zone in journeys left at UTC",
    )
    frequency_caps: list[FrequencyCap] = Field(
        default_factory=list,
        description="per contact and channel, over all journeys; transactional sends count "
        "but are never held",
    )
    quiet_hours: list[QuietHours] = Field(
        default_factory=list,
        description="local times nothing is sent; a journey's own quiet_hours replace these",
    )

    @field_validator("frequency_caps")
    @classmethod
    def _one_cap_per_window(cls, caps: list[FrequencyCap]) -> list[FrequencyCap]:
        seen: set[tuple[str, int]] = set()
        for cap in caps:
            key = (cap.channel, int(cap.per.total_seconds()))
            if key in seen:
                raise ValueError(
                    f"two caps for {cap.channel} per {format_duration(cap.per)}: keep one"
                )
            seen.add(key)
        return caps


async def load_send_rules(session: AsyncSession) -> SendRules:
    row = await session.get(WorkspaceSendRules, 1)
    return SendRules.model_validate(row.rules) if row is not None else SendRules()


async def save_send_rules(session: AsyncSession, rules: SendRules) -> None:
    values = {"rules": rules.model_dump(mode="json"), "updated_at": utcnow()}
    await session.execute(
        insert(WorkspaceSendRules)
        .values(id=1, **values)
        .on_conflict_do_update(index_elements=["id"], set_=values)
    )
