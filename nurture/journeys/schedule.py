"""When a `wait` step ends: pure date arithmetic over the step, the contact and "now"."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nurture.contracts import ContactFacts
from nurture.journeys.definition import WaitStep

# A wait until a date and time ("until 2027-03-01 09:00", a birthday at 10:00) ends at most this
# long after it. A broadcast puts thousands of contacts in the same wait: without a spread their
# timers would all fire at the same instant and the worker and the server would take the whole
# herd at once; Temporal advises spreading such wake-ups (jitter). Each enrollment has its own
# offset, derived from its id, so it is the same on every replay and after continue-as-new.
WAKE_SPREAD = timedelta(minutes=5)


def spread_wake(until: datetime, enrollment_id: uuid.UUID) -> datetime:
    """`until`, plus this enrollment's offset within `WAKE_SPREAD` (whole seconds)."""
    return until + timedelta(seconds=enrollment_id.int % int(WAKE_SPREAD.total_seconds()))


@dataclass(frozen=True)
class WaitPlan:
    """`until` is when to go on (may be in the past: go on at once); None means skip the wait."""

    until: datetime | None
    note: str


def plan_wait(step: WaitStep, now: datetime, facts: ContactFacts, journey_tz: str) -> WaitPlan:
    if step.duration is not None:
        return WaitPlan(now + step.duration, f"wait {step.duration}")
    if step.until is not None:
        until = step.until
        if until.tzinfo is None:
            until = until.replace(tzinfo=ZoneInfo(step.time_zone or journey_tz))
        return WaitPlan(until.astimezone(UTC), f"until {until.isoformat()}")
    assert step.until_field is not None
    return _plan_until_field(step, step.until_field, now, facts, journey_tz)


def contact_zone(step: WaitStep, facts: ContactFacts, journey_tz: str) -> ZoneInfo:
    """The step's time zone, else the contact's (if valid), else the journey's."""
    for name in (step.time_zone, facts.time_zone):
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo(journey_tz)


def _plan_until_field(
    step: WaitStep, field: str, now: datetime, facts: ContactFacts, journey_tz: str
) -> WaitPlan:
    raw = facts.fields.get(field)
    if raw in (None, ""):
        return WaitPlan(None, f"skipped: contact has no {field}")
    parsed = _parse_date_or_datetime(raw)
    if parsed is None:
        return WaitPlan(None, f"skipped: {field} is not a date ({raw!r})")
    zone = contact_zone(step, facts, journey_tz)
    offset = step.offset or (now - now)

    def moment(day: date) -> datetime:
        if isinstance(parsed, datetime) and not step.yearly:
            base = parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)
        else:
            base = datetime.combine(day, step.at or time(0), tzinfo=zone)
        return (base + offset).astimezone(UTC)

    day = parsed.date() if isinstance(parsed, datetime) else parsed
    if step.yearly:
        local_today = now.astimezone(zone).date()
        for year in (local_today.year - 1, local_today.year, local_today.year + 1):
            candidate = moment(_same_day_in(year, day))
            if candidate >= now:
                return WaitPlan(candidate, f"until {field} {candidate.isoformat()} (yearly)")
    until = moment(day)
    return WaitPlan(until, f"until {field} {until.isoformat()}")


def _same_day_in(year: int, day: date) -> date:
    try:
        return day.replace(year=year)
    except ValueError:  # 29 February in a common year
        return date(year, 2, 28)


def _parse_date_or_datetime(raw: object) -> date | datetime | None:
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    try:
        return date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
    except ValueError:
        return None
