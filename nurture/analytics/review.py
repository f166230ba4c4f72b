"""The weekly review: per journey, the last seven days beside the seven before.

For each window: trigger volume (enrollments that entered, not refused), emails sent, and the
open, click and complaint rates of those emails (opened or clicked by a person, complained of,
at any time since), and the conversion rate (enrollments that entered in the window and met
the goal, over those that entered). Windows end at `now`, so a review made on Monday morning
covers the week just ended.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html import escape

from pydantic import BaseModel
from sqlalchemy import false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from nurture.db.models import (
    Enrollment,
    EnrollmentStatus,
    Journey,
    JourneyStatus,
    Message,
    MessageStats,
    MessageStatus,
)

WEEK = timedelta(days=7)
RATES = ("open_rate", "click_rate", "complaint_rate", "conversion_rate")


@dataclass
class Window:
    start: datetime
    end: datetime
    entered: int = 0
    goal_met: int = 0
    sent: int = 0
    opened: int = 0
    clicked: int = 0
    complained: int = 0

    def rates(self) -> dict[str, float | None]:
        def rate(part: int, whole: int) -> float | None:
            return round(part / whole, 4) if whole else None

        return {
            "open_rate": rate(self.opened, self.sent),
            "click_rate": rate(self.clicked, self.sent),
            "complaint_rate": rate(self.complained, self.sent),
            "conversion_rate": rate(self.goal_met, self.entered),
        }


@dataclass
class JourneyReview:
    journey_id: uuid.UUID
    key: str
    name: str
    status: str
    owner: str | None
    this_week: Window
    last_week: Window

    def changes(self) -> dict[str, float | None]:
        """Each rate's change in percentage points (None when either week has no base)."""
        now, before = self.this_week.rates(), self.last_week.rates()
        return {
            name: round((now[name] - before[name]) * 100, 2)  # type: ignore[operator]
            if now[name] is not None and before[name] is not None
            else None
            for name in RATES
        }


@dataclass
class WeeklyReview:
    generated_at: datetime
    journeys: list[JourneyReview] = field(default_factory=list)


async def weekly_review(session: AsyncSession, now: datetime) -> WeeklyReview:
    """The review of every journey that is live or paused, or had entrants in either week."""
    review = WeeklyReview(now)
    windows = {"this": (now - WEEK, now), "last": (now - 2 * WEEK, now - WEEK)}
    numbers: dict[str, dict[uuid.UUID, Window]] = {
        name: {} for name in windows
    }  # window -> journey -> counts
    for name, (start, end) in windows.items():
        for journey_id, values in (await _window(session, start, end)).items():
            numbers[name][journey_id] = Window(start, end, **values)
    active = set(numbers["this"]) | set(numbers["last"])
    journeys = await session.scalars(
        select(Journey)
        .where(
            or_(
                col(Journey.status).in_((JourneyStatus.ACTIVE, JourneyStatus.PAUSED)),
                col(Journey.id).in_(active) if active else false(),
            )
        )
        .order_by(col(Journey.key))
    )
    for journey in journeys:
        review.journeys.append(
            JourneyReview(
                journey_id=journey.id,
                key=journey.key,
                name=journey.name,
                status=journey.status,
                # Journeys may name an owner (an email address) to send the review to.
                owner=journey.owner,
                this_week=numbers["this"].get(journey.id) or Window(*windows["this"]),
                last_week=numbers["last"].get(journey.id) or Window(*windows["last"]),
            )
        )
    return review


async def _window(
    session: AsyncSession, start: datetime, end: datetime
) -> dict[uuid.UUID, dict[str, int]]:
    counts: dict[uuid.UUID, dict[str, int]] = {}

    def put(journey_id: uuid.UUID, **values: int) -> None:
        counts.setdefault(journey_id, {}).update(values)

    entered = await session.execute(
        select(
            col(Enrollment.journey_id),
            func.count(),
            func.count().filter(col(Enrollment.exit_reason) == "goal_met"),
        )
        .where(
            col(Enrollment.enrolled_at) >= start,
            col(Enrollment.enrolled_at) < end,
            col(Enrollment.status) != EnrollmentStatus.NOT_ENROLLED,
        )
        .group_by(col(Enrollment.journey_id))
    )
    for journey_id, count, goal_met in entered:
        put(journey_id, entered=count, goal_met=goal_met)

    sent = (
        select(col(Message.id).label("message_id"), col(Enrollment.journey_id).label("journey_id"))
        .join(Enrollment, col(Enrollment.id) == col(Message.enrollment_id))
        .where(
            col(Message.channel) == "email",
            col(Message.status) == MessageStatus.SENT,
            col(Message.sent_at) >= start,
            col(Message.sent_at) < end,
        )
        .subquery()
    )
    for journey_id, count in await session.execute(
        select(sent.c.journey_id, func.count()).group_by(sent.c.journey_id)
    ):
        put(journey_id, sent=count)

    engaged = await session.execute(
        select(
            sent.c.journey_id,
            func.count().filter(col(MessageStats.opened_at).is_not(None)),
            func.count().filter(col(MessageStats.clicked_at).is_not(None)),
            func.count().filter(col(MessageStats.complained_at).is_not(None)),
        )
        .join(sent, sent.c.message_id == col(MessageStats.message_id))
        .group_by(sent.c.journey_id)
    )
    for journey_id, opened, clicked, complained in engaged:
        put(journey_id, opened=opened, clicked=clicked, complained=complained)
    return counts


# --- the weekly email -----------------------------------------------------------------------

REVIEW_WORKFLOW = "WeeklyReview"
REVIEW_SCHEDULE_ID = "nurture-weekly-review"


class ReviewRun(BaseModel):
    """One run of the weekly review: the moment it covers up to (the schedule's time)."""

    at: datetime


def recipients(review: WeeklyReview, everyone: Sequence[str]) -> dict[str, list[JourneyReview]]:
    """Who gets which journeys: the REVIEW_RECIPIENTS all of them, an owner their own."""
    mail: dict[str, list[JourneyReview]] = {
        address.strip().lower(): list(review.journeys) for address in everyone if address.strip()
    }
    for journey in review.journeys:
        owner = (journey.owner or "").strip().lower()
        if owner and owner not in mail:
            mail.setdefault(owner, []).append(journey)
    return mail


def review_email(review: WeeklyReview, journeys: list[JourneyReview]) -> tuple[str, str, str]:
    """Subject, HTML and text of the review of these journeys."""
    from nurture.console import templates  # Jinja2 with autoescape, the console's templates

    subject = f"Nurture weekly review: week to {review.generated_at:%Y-%m-%d}"
    part = WeeklyReview(review.generated_at, journeys)
    table = templates.get_template("review_table.html").render(review=part)
    html = (
        f"<html><body style='font-family:sans-serif'><h1>{escape(subject)}</h1>"
        "<p>The last 7 days beside the 7 before. Rates of emails sent in the week; conversion "
        "of contacts who entered in it.</p>"
        f"{table}</body></html>"
    )
    lines = [subject, ""]
    for journey in journeys:
        lines.append(f"{journey.name} ({journey.key})")
        for label, window in (("this week", journey.this_week), ("week before", journey.last_week)):
            rates = window.rates()
            shown = ", ".join(
                f"{name.replace('_', ' ')} "
                + ("-" if rates[name] is None else f"{(rates[name] or 0) * 100:.1f}%")
                for name in RATES
            )
            lines.append(f"  {label}: {window.entered} entered, {window.sent} sent; {shown}")
    return subject, html, "\n".join(lines)
