"""A journey's numbers day by day, for a date range read in a chosen time zone.

Each day (midnight to midnight in `time_zone`) counts what happened on it: enrollments
entered (not refused at entry), ended (completed, exited, failed), met the goal; messages sent;
messages first opened by a person and first clicked that day; complaints and unsubscribes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Select, and_, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from nurture.analytics.journey import ENDED_STATUSES, enrollment_filter, find_journey
from nurture.db.models import (
    Enrollment,
    EnrollmentStatus,
    Message,
    MessageStats,
    MessageStatus,
)
from nurture.errors import Invalid

MAX_DAYS = 366
SERIES = (
    "entered",
    "ended",
    "goal_met",
    "sent",
    "opened",
    "clicked",
    "complained",
    "unsubscribed",
)


@dataclass
class DailySeries:
    journey_key: str
    version: int | None
    time_zone: str
    days: list[date]
    counts: dict[str, list[int]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"date": day.isoformat(), **{name: self.counts[name][i] for name in SERIES}}
            for i, day in enumerate(self.days)
        ]


def read_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise Invalid(
            "unknown time zone",
            detail=[{"path": "query.time_zone", "message": f"unknown time zone {name!r}"}],
        ) from err


def check_range(start: date, end: date) -> None:
    if end < start:
        raise Invalid(
            "the range ends before it starts",
            detail=[{"path": "query.to", "message": "must be on or after 'from'"}],
        )
    if (end - start).days + 1 > MAX_DAYS:
        raise Invalid(
            "the range is too long",
            detail=[{"path": "query.to", "message": f"at most {MAX_DAYS} days from 'from'"}],
        )


async def daily_series(
    session: AsyncSession,
    key: str,
    start: date,
    end: date,
    time_zone: str = "UTC",
    version: int | None = None,
) -> DailySeries:
    """Counts for each day from `start` to `end` (both included) in `time_zone`."""
    zone = read_zone(time_zone)
    check_range(start, end)
    journey = await find_journey(session, key)
    of_journey = enrollment_filter(journey.id, version)
    since = datetime.combine(start, time(), zone)
    until = datetime.combine(end + timedelta(days=1), time(), zone)
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    series = DailySeries(journey.key, version, time_zone, days)
    index = {day: i for i, day in enumerate(days)}

    def day_of(column: Any) -> ColumnElement[Any]:
        # AT TIME ZONE turns the instant into the local wall time of that zone.
        return func.date(func.timezone(time_zone, column))

    def counted(stamp: Any, *where: ColumnElement[bool]) -> Select[Any]:
        return (
            select(day_of(stamp).label("day"), func.count())
            .where(stamp >= since, stamp < until, *where)
            .group_by(literal_column("day"))
        )

    enrolled_at, ended_at = col(Enrollment.enrolled_at), col(Enrollment.ended_at)
    message_of_journey = and_(
        col(Message.enrollment_id) == col(Enrollment.id),
        of_journey,
    )

    def first_time(column: Any) -> Select[Any]:
        """Messages of the journey counted on the day something first happened to them
        (`message_stats`, kept by triggers)."""
        return (
            counted(column)
            .join(Message, col(Message.id) == col(MessageStats.message_id))
            .join(Enrollment, message_of_journey)
        )

    queries: dict[str, Select[Any]] = {
        "entered": counted(
            enrolled_at, of_journey, col(Enrollment.status) != EnrollmentStatus.NOT_ENROLLED
        ),
        "ended": counted(ended_at, of_journey, col(Enrollment.status).in_(ENDED_STATUSES)),
        "goal_met": counted(ended_at, of_journey, col(Enrollment.exit_reason) == "goal_met"),
        "sent": counted(col(Message.sent_at), col(Message.status) == MessageStatus.SENT).join(
            Enrollment, message_of_journey
        ),
        # A message is counted on the day a person first opened it (a click is an open too),
        # first clicked it, first complained or unsubscribed from it.
        "opened": first_time(col(MessageStats.opened_at)),
        "clicked": first_time(col(MessageStats.clicked_at)),
        "complained": first_time(col(MessageStats.complained_at)),
        "unsubscribed": first_time(col(MessageStats.unsubscribed_at)),
    }
    for name in SERIES:
        counts = [0] * len(days)
        for day, count in await session.execute(queries[name]):
            if day in index:
                counts[index[day]] = count
        series.counts[name] = counts
    return series
