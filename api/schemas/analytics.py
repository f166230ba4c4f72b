"""Journey analytics: step counts, send funnels, goal conversion, daily series."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from nurture.analytics.journey import JourneyAnalytics, SendFunnel, StepStats


class StepStatsOut(BaseModel):
    step_id: str
    step_type: str
    title: str | None
    entered: int = Field(description="enrollments that reached the step (once each)")
    visits: int = Field(description="visits, counting loops back to the step")
    now: int = Field(description="in-flight enrollments at the step now")
    passed: int = Field(description="enrollments that left the step for another")
    exited: int = Field(description="enrollments that ended at the step")
    exits: dict[str, int] = Field(description="ended here, by reason (exit_reason or completed)")
    outcomes: dict[str, int] = Field(description="how visits left: event/timeout, branch rule...")

    @classmethod
    def of(cls, stats: StepStats) -> StepStatsOut:
        return cls(
            step_id=stats.step_id,
            step_type=stats.step_type,
            title=stats.title,
            entered=stats.entered,
            visits=stats.visits,
            now=stats.now,
            passed=stats.passed,
            exited=stats.exited,
            exits=stats.exits,
            outcomes=stats.outcomes,
        )


class SendFunnelOut(BaseModel):
    step_id: str
    channel: str
    template: str | None
    messages: int = Field(description="messages the step made, whatever became of them")
    sent: int
    sending: int = Field(description="handed to the provider, answer not recorded yet")
    skipped: dict[str, int] = Field(description="never sent, by reason code")
    failed: dict[str, int] = Field(description="refused by the provider, by reason code")
    delivered: int
    opened: int = Field(description="messages opened by a person (an open or a click)")
    opened_contacts: int
    machine_opens: int = Field(description="messages opened only by mail proxies or scanners")
    clicked: int
    clicked_contacts: int
    links: dict[str, int] = Field(description="messages clicked, per named link")
    bounced: int = Field(description="hard bounces")
    complained: int
    unsubscribed: int
    rates: dict[str, float | None] = Field(
        description="open, click, complaint and unsubscribe rates are over sent minus bounced; "
        "delivery and bounce rates over sent; click_to_open over opened. null when the base is 0"
    )

    @classmethod
    def of(cls, funnel: SendFunnel) -> SendFunnelOut:
        return cls(
            step_id=funnel.step_id,
            channel=funnel.channel,
            template=funnel.template,
            messages=funnel.messages,
            sent=funnel.sent,
            sending=funnel.sending,
            skipped=funnel.skipped,
            failed=funnel.failed,
            delivered=funnel.delivered,
            opened=funnel.opened,
            opened_contacts=funnel.opened_contacts,
            machine_opens=funnel.machine_opens,
            clicked=funnel.clicked,
            clicked_contacts=funnel.clicked_contacts,
            links=funnel.links,
            bounced=funnel.bounced,
            complained=funnel.complained,
            unsubscribed=funnel.unsubscribed,
            rates=funnel.rates(),
        )


class GoalOut(BaseModel):
    enrolled: int
    converted: int
    met_goal_while_enrolled: int
    met_goal_after: int
    conversion_rate: float | None
    counting_since: datetime | None


class JourneyAnalyticsOut(BaseModel):
    journey_key: str
    name: str
    status: str
    version: int | None = Field(description="the version counted; null: all versions")
    live_version: int | None
    versions: list[int]
    enrollments: dict[str, int] = Field(description="enrollments by status")
    steps: list[StepStatsOut]
    sends: list[SendFunnelOut]
    goal: GoalOut | None = Field(description="goal conversion (all versions), as /goal reports")

    @classmethod
    def of(cls, result: JourneyAnalytics) -> JourneyAnalyticsOut:
        goal = result.goal
        return cls(
            journey_key=result.journey_key,
            name=result.name,
            status=result.status,
            version=result.version,
            live_version=result.live_version,
            versions=result.versions,
            enrollments=result.enrollments,
            steps=[StepStatsOut.of(step) for step in result.steps],
            sends=[SendFunnelOut.of(funnel) for funnel in result.sends],
            goal=GoalOut(
                enrolled=goal.enrolled,
                converted=goal.converted,
                met_goal_while_enrolled=goal.met_goal_while_enrolled,
                met_goal_after=goal.met_goal_after,
                conversion_rate=goal.conversion_rate,
                counting_since=goal.counting_since,
            )
            if goal is not None and goal.goal is not None
            else None,
        )


class DailyOut(BaseModel):
    journey_key: str
    version: int | None
    time_zone: str
    days: list[dict[str, Any]] = Field(
        description="one row per day: date, entered, ended, goal_met, sent, opened, clicked, "
        "complained, unsubscribed"
    )
