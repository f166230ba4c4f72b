"""Quiet hours: local-time windows in which nothing is sent, and when the next one ends.

Pure functions over an instant and a time zone (zoneinfo), so the send activity decides the
same way for the same input. Windows are read on the contact's wall clock: a window from 21:00
to 08:00 holds a send made at 22:00 until the clock next reads 08:00, whatever the UTC offset
did meanwhile. Where that wall time does not exist (the spring-forward gap), the window ends
when the clock jumps past it; where it exists twice (the fall-back fold), at its first
occurrence after the send (and a send in the repeated hour is judged by the wall clock too).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Channel = Literal["email", "sms", "push"]


class QuietHours(BaseModel):
    """From `start` to `end` local time nothing is sent; `end` before `start` runs over
    midnight; `start` equal to `end` is the whole day. `days`: the days a window starts on
    (all by default); `channels`: the channels it holds (all by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: time = Field(examples=["21:00"])
    end: time = Field(examples=["08:00"])
    days: list[Weekday] | None = Field(default=None, examples=[["sat", "sun"]])
    channels: list[Channel] | None = Field(default=None, examples=[["sms"]])

    @field_validator("start", "end")
    @classmethod
    def _wall_time(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("a local time of day such as '21:00', without an offset")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> QuietHours:
        for name in ("days", "channels"):
            values = getattr(self, name)
            if values is not None:
                if not values:
                    raise ValueError(f"{name}: leave it out rather than empty")
                if len(set(values)) != len(values):
                    raise ValueError(f"{name}: {', '.join(values)} names one twice")
        return self

    def applies_to(self, channel: str) -> bool:
        return self.channels is None or channel in self.channels

    def label(self) -> str:
        days = f" on {','.join(self.days)}" if self.days else ""
        return f"{self.start:%H:%M}-{self.end:%H:%M}{days}"


@dataclass(frozen=True)
class Hold:
    """A send inside quiet hours: held until `until` (UTC)."""

    until: datetime
    window: QuietHours
    zone: str

    def words(self, at: datetime) -> str:
        """`quiet hours until 08:00 Europe/Warsaw`; with the date when that is a day or more
        away."""
        local_until = self.until.astimezone(ZoneInfo(self.zone))
        soon = self.until - at < timedelta(days=1)
        when = f"{local_until:%H:%M}" if soon else f"{local_until:%Y-%m-%d %H:%M}"
        return f"quiet hours until {when} {self.zone}"


def quiet_until(
    at: datetime, zone_name: str, windows: list[QuietHours], channel: str
) -> Hold | None:
    """None when a send at `at` is outside every window for `channel`; else when it may go."""
    zone = ZoneInfo(zone_name)
    windows = [w for w in windows if w.applies_to(channel)]
    hold: Hold | None = None
    moment = at
    # Windows can touch (a weekend of whole days): follow them until one ends outside all.
    for _ in range(32):
        inside = _window_end(moment, zone, windows)
        if inside is None:
            return hold
        end, window = inside
        hold = Hold(until=end, window=window, zone=zone_name)
        moment = end
    return hold


def _window_end(
    at: datetime, zone: ZoneInfo, windows: list[QuietHours]
) -> tuple[datetime, QuietHours] | None:
    """The latest end among the windows `at` is in (with the window), or None."""
    local = at.astimezone(zone).replace(tzinfo=None)
    found: tuple[datetime, QuietHours] | None = None
    for window in windows:
        # A window started today or (over midnight or all day) yesterday may hold `local`.
        for start_day in (local.date(), local.date() - timedelta(days=1)):
            if window.days is not None and WEEKDAYS[start_day.weekday()] not in window.days:
                continue
            begin = datetime.combine(start_day, window.start)
            end_day = start_day if window.end > window.start else start_day + timedelta(days=1)
            finish = datetime.combine(end_day, window.end)
            if begin <= local < finish:
                end = first_instant_at_or_after(finish, zone, at)
                if found is None or end > found[0]:
                    found = (end, window)
    return found


def first_instant_at_or_after(wall: datetime, zone: ZoneInfo, after: datetime) -> datetime:
    """The first instant after `after` at which the wall clock in `zone` reads `wall` or later
    (UTC). In a gap that is the jump; in a fold, the first of the two that is after `after`."""
    instants = []
    for fold in (0, 1):
        candidate = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if candidate.astimezone(zone).replace(tzinfo=None) == wall:
            instants.append(candidate)
    later = sorted(i for i in instants if i > after)
    if later:
        return later[0]
    if instants:  # both passed already: the caller's `after` is in the repeated hour
        return max(instants)
    # A gap: the wall time is skipped. Start from the earliest reading and walk to the jump.
    candidate = min(wall.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1))
    step = timedelta(minutes=1)
    while candidate.astimezone(zone).replace(tzinfo=None) < wall:
        candidate += step
    return candidate
