"""Date arithmetic for templates: the send time (`sent_at`) and dates in contact fields.

    {{ sent_at | add_days(7) | date("%d %B %Y", contact.time_zone) }}  ->  08 December 2026

Values are ISO 8601 text in and out (the render context is plain JSON), so filters chain. A
value that is not a date is a render error naming the filter, never a silent blank."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

MAX_SHIFT_DAYS = 36_600  # a century either way: beyond that it is a mistake, not a coupon


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())  # IANA names only, as journeys accept


def _parse(value: Any, filter_name: str) -> date | datetime:
    if isinstance(value, datetime | date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                return date.fromisoformat(text)
            parsed = datetime.fromisoformat(text)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            pass
    raise ValueError(f"{filter_name}: {value!r} is not an ISO 8601 date or date-time")


def _shift(value: Any, delta: timedelta, filter_name: str) -> str:
    moment = _parse(value, filter_name)
    return (moment + delta).isoformat()


def add_days(value: Any, days: Any) -> str:
    if not isinstance(days, int) or isinstance(days, bool) or abs(days) > MAX_SHIFT_DAYS:
        raise ValueError(f"add_days: {days!r} is not a whole number of days")
    return _shift(value, timedelta(days=days), "add_days")


def add_hours(value: Any, hours: Any) -> str:
    if not isinstance(hours, int) or isinstance(hours, bool) or abs(hours) > MAX_SHIFT_DAYS * 24:
        raise ValueError(f"add_hours: {hours!r} is not a whole number of hours")
    return _shift(value, timedelta(hours=hours), "add_hours")


def format_date(value: Any, pattern: str = "%Y-%m-%d", time_zone: Any = None) -> str:
    """strftime with `pattern`, a date-time first moved to `time_zone` (an IANA name; a
    missing or unknown one leaves it in UTC)."""
    if not isinstance(pattern, str) or len(pattern) > 100:
        raise ValueError("date: the pattern must be short text such as '%d %B %Y'")
    moment = _parse(value, "date")
    if isinstance(moment, datetime) and isinstance(time_zone, str) and time_zone in _zones():
        with contextlib.suppress(ValueError, ZoneInfoNotFoundError):
            moment = moment.astimezone(ZoneInfo(time_zone))
    return moment.strftime(pattern)


DATE_FILTERS: dict[str, Callable[..., str]] = {
    "add_days": add_days,
    "add_hours": add_hours,
    "date": format_date,
}
