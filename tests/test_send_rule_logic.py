"""Pure send-rule logic: quiet hours across DST in two zones, rolling cap windows, dates in
templates. (The workflow's use of them: tests/test_send_rules.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from nurture.content.dates import add_days, format_date
from nurture.sending.caps import FrequencyCap, cap_verdict
from nurture.sending.rules import SendRules
from nurture.sending.windows import QuietHours, first_instant_at_or_after, quiet_until

NIGHT = [QuietHours(start=time(21), end=time(8))]
WARSAW, NEW_YORK = "Europe/Warsaw", "America/New_York"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc,arg-type]


def local(zone: str, *parts: int, fold: int = 0) -> datetime:
    return datetime(*parts, tzinfo=ZoneInfo(zone), fold=fold)  # type: ignore[misc,arg-type]


@pytest.mark.parametrize(
    ("zone", "at", "opens"),
    [
        # The night the clocks spring forward: 08:00 is one hour less after 22:00 in UTC.
        (WARSAW, local(WARSAW, 2027, 3, 27, 22), utc(2027, 3, 28, 6)),  # 08:00 CEST
        (NEW_YORK, local(NEW_YORK, 2027, 3, 13, 22), utc(2027, 3, 14, 12)),  # 08:00 EDT
        # The night they fall back: one hour more.
        (WARSAW, local(WARSAW, 2027, 10, 30, 22), utc(2027, 10, 31, 7)),  # 08:00 CET
        (NEW_YORK, local(NEW_YORK, 2027, 11, 6, 22), utc(2027, 11, 7, 13)),  # 08:00 EST
        # In the repeated hour itself (second 01:30 in New York), still quiet until 08:00.
        (NEW_YORK, local(NEW_YORK, 2027, 11, 7, 1, 30, fold=1), utc(2027, 11, 7, 13)),
        # After midnight, before the end: the window started the day before.
        (WARSAW, local(WARSAW, 2027, 3, 28, 5), utc(2027, 3, 28, 6)),
    ],
)
def test_a_night_window_opens_at_local_eight_across_dst(
    zone: str, at: datetime, opens: datetime
) -> None:
    hold = quiet_until(at, zone, NIGHT, "sms")
    assert hold is not None
    assert hold.until == opens
    assert hold.until.astimezone(ZoneInfo(zone)).time() == time(8)


def test_outside_the_window_nothing_is_held() -> None:
    assert quiet_until(local(WARSAW, 2027, 3, 28, 12), WARSAW, NIGHT, "sms") is None
    assert quiet_until(local(WARSAW, 2027, 3, 28, 8), WARSAW, NIGHT, "sms") is None  # end: open
    assert quiet_until(local(WARSAW, 2027, 3, 28, 20, 59), WARSAW, NIGHT, "sms") is None


def test_a_window_ending_in_the_spring_forward_gap_ends_at_the_jump() -> None:
    """02:30 never happens on 28 March 2027 in Warsaw (02:00 -> 03:00 CEST): the window opens
    when the clock jumps, 03:00 CEST, not at 03:30 (02:30 read with the old offset)."""
    window = [QuietHours(start=time(22), end=time(2, 30))]
    hold = quiet_until(local(WARSAW, 2027, 3, 28, 1, 0), WARSAW, window, "email")
    assert hold is not None
    assert hold.until == utc(2027, 3, 28, 1)  # 03:00 CEST
    # New York: 02:00 EST -> 03:00 EDT on 14 March 2027.
    hold = quiet_until(local(NEW_YORK, 2027, 3, 14, 1, 0), NEW_YORK, window, "email")
    assert hold is not None
    assert hold.until == utc(2027, 3, 14, 7)  # 03:00 EDT


def test_a_window_ending_in_the_fall_back_fold_ends_at_its_first_occurrence() -> None:
    """02:30 happens twice on 31 October 2027 in Warsaw: a send at 01:00 goes at the first."""
    window = [QuietHours(start=time(22), end=time(2, 30))]
    hold = quiet_until(local(WARSAW, 2027, 10, 31, 1), WARSAW, window, "email")
    assert hold is not None
    assert hold.until == utc(2027, 10, 31, 0, 30)  # 02:30 CEST, the first one
    # In the repeated hour (the second 02:10, CET) the wall clock is inside again: it goes at
    # the second 02:30.
    second = local(WARSAW, 2027, 10, 31, 2, 10, fold=1)
    hold = quiet_until(second, WARSAW, window, "email")
    assert hold is not None
    assert hold.until == utc(2027, 10, 31, 1, 30)  # 02:30 CET
    # New York falls back 02:00 EDT -> 01:00 EST on 7 November 2027: 01:30 exists twice.
    early = [QuietHours(start=time(22), end=time(1, 30))]
    hold = quiet_until(local(NEW_YORK, 2027, 11, 7, 0, 30), NEW_YORK, early, "email")
    assert hold is not None
    assert hold.until == utc(2027, 11, 7, 5, 30)  # 01:30 EDT, the first one


def test_first_instant_in_gap_and_fold_directly() -> None:
    zone = ZoneInfo(WARSAW)
    gap = first_instant_at_or_after(datetime(2027, 3, 28, 2, 15), zone, utc(2027, 3, 27))
    assert gap == utc(2027, 3, 28, 1)
    fold = datetime(2027, 10, 31, 2, 15)
    assert first_instant_at_or_after(fold, zone, utc(2027, 10, 30)) == utc(2027, 10, 31, 0, 15)
    after_first = utc(2027, 10, 31, 0, 20)
    assert first_instant_at_or_after(fold, zone, after_first) == utc(2027, 10, 31, 1, 15)


def test_weekday_windows_chain_and_channels_filter() -> None:
    weekend = [QuietHours(start=time(0), end=time(0), days=["sat", "sun"])]
    saturday_noon = local(WARSAW, 2026, 12, 5, 12)  # a Saturday
    hold = quiet_until(saturday_noon, WARSAW, weekend, "email")
    assert hold is not None
    assert hold.until == local(WARSAW, 2026, 12, 7, 0)  # Monday 00:00: both days held
    assert "2026-12-07 00:00 Europe/Warsaw" in hold.words(saturday_noon)
    assert quiet_until(local(WARSAW, 2026, 12, 7, 12), WARSAW, weekend, "email") is None
    sms_only = [QuietHours(start=time(21), end=time(8), channels=["sms"])]
    assert quiet_until(local(WARSAW, 2026, 12, 7, 23), WARSAW, sms_only, "email") is None
    assert quiet_until(local(WARSAW, 2026, 12, 7, 23), WARSAW, sms_only, "sms") is not None


def test_words_name_the_local_time_and_zone() -> None:
    at = local(WARSAW, 2026, 12, 7, 5)
    hold = quiet_until(at, WARSAW, NIGHT, "sms")
    assert hold is not None
    assert hold.words(at) == "quiet hours until 08:00 Europe/Warsaw"


def test_rolling_cap_windows() -> None:
    caps = [
        FrequencyCap(channel="sms", max=2, per=timedelta(hours=24)),
        FrequencyCap(channel="email", max=3, per=timedelta(days=1)),
    ]
    at = utc(2026, 12, 2, 12)
    first, second = at - timedelta(hours=20), at - timedelta(hours=2)
    verdict = cap_verdict(caps, "sms", at, [second, first])
    assert verdict is not None
    assert verdict.allowed_at == first + timedelta(hours=24)  # when the oldest leaves
    assert verdict.words() == "frequency cap sms 2/1d"
    assert cap_verdict(caps, "sms", at, [second]) is None
    # A claim exactly one window old no longer counts.
    assert cap_verdict(caps, "sms", at, [at - timedelta(hours=24), second]) is None
    assert cap_verdict(caps, "email", at, [first, second]) is None  # other channel's cap
    # Two caps: the later allowed instant wins (3 per 7 days outlasts 2 per day).
    both = [*caps, FrequencyCap(channel="sms", max=3, per=timedelta(days=7))]
    three = [at - timedelta(days=3), first, second]
    verdict = cap_verdict(both, "sms", at, three)
    assert verdict is not None
    assert verdict.allowed_at == at + timedelta(days=4)
    assert verdict.cap.per == timedelta(days=7)


def test_invalid_rules_name_their_place() -> None:
    with pytest.raises(ValidationError) as err:
        SendRules.model_validate(
            {
                "time_zone": "Mars/Olympus",
                "frequency_caps": [{"channel": "sms", "max": 0, "per": "0h"}],
                "quiet_hours": [{"start": "21:00", "end": "8pm"}],
            }
        )
    places = {".".join(map(str, e["loc"])) for e in err.value.errors()}
    assert places == {
        "time_zone",
        "frequency_caps.0.max",
        "frequency_caps.0.per",
        "quiet_hours.0.end",
    }


def test_dates_in_templates() -> None:
    sent = "2026-12-01T23:30:00+00:00"
    assert add_days(sent, 7) == "2026-12-08T23:30:00+00:00"
    assert format_date(add_days(sent, 7), "%d %B %Y", WARSAW) == "09 December 2026"
    assert format_date("2026-12-01", "%d.%m.%Y") == "01.12.2026"
    with pytest.raises(ValueError, match="add_days"):
        add_days("soon", 7)


def test_the_time_zone_is_the_contacts_else_the_journeys_else_the_workspaces() -> None:
    from nurture.sending.gate import contact_zone

    workspace = SendRules(time_zone="Europe/Lisbon")
    assert contact_zone("Asia/Tokyo", "America/New_York", workspace) == "Asia/Tokyo"
    assert contact_zone(None, "America/New_York", workspace) == "America/New_York"
    assert contact_zone("Mars/Olympus", None, workspace) == "Europe/Lisbon"  # not IANA
    assert contact_zone("", None, workspace) == "Europe/Lisbon"
