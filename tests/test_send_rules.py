"""Send rules on the time-skipping server: frequency caps across journeys (delay or skip), a
transactional send through a full cap, expiry, two sends racing for a cap's last slot, quiet
hours across DST in two zones and a contact whose time zone changes while held, and the rules
API. Pure logic: tests/test_send_rule_logic.py; throttling: tests/test_send_throttle.py."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.messaging import MessagingActivities
from nurture.contracts import EnrollmentResult, SendRequest, SendResult
from nurture.db.engine import SessionFactory
from nurture.db.models import Message, OutboxMessage, SendClaim, SendHold, Template
from nurture.journeys.schedule import WAKE_SPREAD
from nurture.sending.rules import SendRules, save_send_rules
from nurture.settings import Settings
from tests.support import (
    finish,
    make_contact,
    ok,
    problems,
    progress,
    publish_journey,
    reach_step,
    start,
)
from worker import default_channels

pytestmark = pytest.mark.usefixtures("worker")

SMS_CAP = {"frequency_caps": [{"channel": "sms", "max": 2, "per": "24h"}]}
NIGHTS = {"quiet_hours": [{"start": "21:00", "end": "08:00"}]}


async def set_rules(sessions: SessionFactory, rules: dict[str, Any]) -> None:
    async with sessions.begin() as session:
        await save_send_rules(session, SendRules.model_validate(rules))


def sms_journey(key: str, *templates: str, wait: str | None = None, **extra: Any) -> dict[str, Any]:
    """A journey sending these SMS one after the other (steps s0, s1, ...), after a wait."""
    steps: dict[str, Any] = {}
    for i, template in enumerate(templates):
        nxt = f"s{i + 1}" if i + 1 < len(templates) else None
        steps[f"s{i}"] = {"type": "send_sms", "template": template, "next": nxt}
    if wait is not None:
        steps["w"] = {"type": "wait", "duration": wait, "next": "s0"}
    start = "w" if wait is not None else "s0"
    return {"key": key, "name": key, "start": start, "steps": steps, **extra}


async def after_two_sms(
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
    journey: dict[str, Any],
    contact_id: uuid.UUID,
) -> EnrollmentResult:
    """Journey "pair" sends two SMS at once; `journey` (which starts with an hour's wait)
    runs beside it. Both run on one stretch of the test server's clock: it jumps years ahead
    once nothing is left to run."""
    await publish_journey(sessions, sms_journey("pair", "hello", "tips"))
    await publish_journey(sessions, journey)
    _, pair = await start(sessions, client, task_queue, "pair", contact_id)
    _, other = await start(sessions, client, task_queue, journey["key"], contact_id)
    result = await finish(env, other)
    assert (await finish(env, pair)).status == "completed"
    assert result.status == "completed", result
    return result


async def claims(sessions: SessionFactory, contact_id: uuid.UUID) -> list[SendClaim]:
    async with sessions() as session:
        rows = await session.scalars(
            select(SendClaim)
            .where(col(SendClaim.contact_id) == contact_id)
            .order_by(col(SendClaim.at))
        )
        return list(rows)


async def holds(sessions: SessionFactory, contact_id: uuid.UUID) -> list[SendHold]:
    async with sessions() as session:
        rows = await session.scalars(
            select(SendHold)
            .where(col(SendHold.contact_id) == contact_id)
            .order_by(col(SendHold.at))
        )
        return list(rows)


async def run_journey(
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
    key: str,
    contact_id: uuid.UUID,
) -> str:
    """Run an enrollment to its end; the outcome of its last step."""
    _, handle = await start(sessions, client, task_queue, key, contact_id)
    result = await finish(env, handle)
    assert result.status == "completed", result
    outcome = result.path[-1].outcome
    assert outcome is not None
    return outcome


async def test_two_sms_per_day_across_two_journeys_delays_the_third(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    """Seed 004's "at most 2 SMS per user per 24 hours": a third SMS from another journey
    waits until the first one is 24 hours old, then goes."""
    await set_rules(sessions, SMS_CAP)
    contact = await make_contact(sessions, phone="+48500100200")
    offer = sms_journey("offer", "offer", wait="1h")

    result = await after_two_sms(sessions, client, env, task_queue, offer, contact)
    outcome = result.path[-1].outcome
    assert outcome is not None

    first, _, third = await claims(sessions, contact)
    allowed = first.at + timedelta(hours=24)
    assert allowed <= third.at < allowed + timedelta(minutes=1), (first.at, third.at)
    assert outcome.startswith("sent (delayed: frequency cap sms 2/1d until ")
    (hold,) = await holds(sessions, contact)
    assert (hold.rule, hold.action, hold.until) == ("frequency_cap", "delayed", allowed)
    assert hold.journey_key == "offer"
    async with sessions() as session:
        statuses = list(await session.scalars(select(col(Message.status))))
    assert sorted(statuses) == ["sent", "sent", "sent"]


async def test_a_journey_that_skips_capped_sends_goes_on_without_it(
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
    api: httpx.AsyncClient,
) -> None:
    ok(await api.put("/v1/send-rules", json=SMS_CAP))
    offer = sms_journey("offer", "offer", "after", wait="1h", on_cap="skip")
    contact = await make_contact(sessions, phone="+48500100201")

    result = await after_two_sms(sessions, client, env, task_queue, offer, contact)

    assert [(p.step, p.outcome) for p in result.path] == [
        ("w", "waited"),
        ("s0", "skipped: frequency cap sms 2/1d"),
        ("s1", "skipped: frequency cap sms 2/1d"),
    ]
    assert len(await claims(sessions, contact)) == 2  # skipped sends are not counted
    async with sessions() as session:
        skipped = await session.scalar(select(Message).where(col(Message.template) == "offer"))
    assert skipped is not None
    assert (skipped.status, skipped.reason) == ("skipped", "frequency cap sms 2/1d")
    timeline = ok(await api.get(f"/v1/contacts/{contact}/timeline", params={"kinds": "message"}))
    reasons = [e["reason"] for e in timeline["items"]]
    assert reasons.count("frequency_cap") == 2
    counts = ok(await api.get("/v1/send-rules/holds", params={"journey": "offer"}))["counts"]
    assert counts == [{"rule": "frequency_cap", "action": "skipped", "channel": "sms", "count": 2}]


async def test_a_transactional_send_passes_a_full_cap_and_counts(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await set_rules(sessions, SMS_CAP)
    order = sms_journey("order-problem", "order-problem", wait="1h")
    order["steps"]["s0"]["transactional"] = True
    async with sessions.begin() as session:  # seed 004's coupon: valid 7 days from sending
        await session.execute(
            insert(Template).values(
                key="order-problem",
                channel="sms",
                text="Sorry! Code valid until {{ sent_at | add_days(7) | date('%Y-%m-%d') }}",
            )
        )
    contact = await make_contact(sessions, phone="+48500100202")

    result = await after_two_sms(sessions, client, env, task_queue, order, contact)
    assert result.path[-1].outcome == "sent"

    first, second, third = await claims(sessions, contact)
    assert third.transactional and not first.transactional
    assert third.at - second.at < timedelta(hours=1, minutes=1)  # after the wait, not held
    assert await holds(sessions, contact) == []
    async with sessions() as session:
        sent = await session.scalar(
            select(OutboxMessage).where(col(OutboxMessage.template) == "order-problem")
        )
    assert sent is not None
    valid_until = (third.at + timedelta(days=7)).date().isoformat()
    assert f"Code valid until {valid_until}" in str(sent.payload)


async def test_a_send_held_past_its_expiry_is_skipped_not_sent_late(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    """Capped until tomorrow, but the coupon may only go within 2 hours."""
    await set_rules(sessions, SMS_CAP)
    coupon = sms_journey("black-friday", "coupon", wait="1h")
    coupon["steps"]["s0"]["expires_after"] = "2h"
    contact = await make_contact(sessions, phone="+48500100203")

    result = await after_two_sms(sessions, client, env, task_queue, coupon, contact)

    step = result.path[-1]
    assert step.outcome == (
        "skipped: expired: not sent within 2h (expires_after) "
        f"({(await holds(sessions, contact))[0].action}: "
        f"{(await holds(sessions, contact))[0].detail})"
    )
    delayed, expired = await holds(sessions, contact)
    assert (delayed.rule, expired.rule, expired.action) == (
        "frequency_cap",
        "expired",
        "skipped",
    )
    assert expired.at - step.entered_at == timedelta(hours=2) or (
        timedelta(hours=2) <= expired.at - step.entered_at < timedelta(hours=2, minutes=1)
    )
    assert len(await claims(sessions, contact)) == 2
    async with sessions() as session:
        message = await session.scalar(select(Message).where(col(Message.template) == "coupon"))
    assert message is not None and message.status == "skipped"


async def test_two_sends_racing_for_the_last_slot_exactly_one_passes(
    sessions: SessionFactory,
) -> None:
    """Six sends to one contact at the same moment, each in its own transaction, for the
    last slot of a cap of 2: one goes, the others are delayed."""
    await set_rules(sessions, SMS_CAP)
    contact = await make_contact(sessions, phone="+48500100204")
    async with sessions.begin() as session:
        session.add(Template(key="race", channel="sms", text="Hi"))
    messaging = MessagingActivities(sessions, default_channels(sessions), Settings())
    now = datetime.now().astimezone()

    def request(n: int) -> SendRequest:
        return SendRequest(
            idempotency_key=f"race:{n}",
            enrollment_id=uuid.uuid4(),
            contact_id=contact,
            journey_key=f"journey-{n}",
            step="s0",
            channel="sms",
            template="race",
            at=now,
        )

    first = await ActivityEnvironment().run(messaging.send_message, request(0))
    assert first.status == "sent"
    results: list[SendResult] = await asyncio.gather(
        *(ActivityEnvironment().run(messaging.send_message, request(n)) for n in range(1, 7))
    )
    assert sorted(r.status for r in results) == ["held"] * 5 + ["sent"]
    assert len(await claims(sessions, contact)) == 2
    # A retry of the send that passed finds its message: it neither sends nor counts again.
    winner = next(n for n, r in enumerate(results, start=1) if r.status == "sent")
    again = await ActivityEnvironment().run(messaging.send_message, request(winner))
    assert again.status == "sent"
    assert len(await claims(sessions, contact)) == 2


async def test_send_rules_api_refuses_invalid_rules_with_their_path(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    assert ok(await api.get("/v1/send-rules")) == {
        "time_zone": "UTC",
        "frequency_caps": [],
        "quiet_hours": [],
    }
    bad = await api.put(
        "/v1/send-rules",
        json={
            "time_zone": "Europe/Warsawa",
            "frequency_caps": [
                {"channel": "sms", "max": 2, "per": "1d"},
                {"channel": "fax", "max": 1, "per": "1d"},
                {"channel": "email", "max": 3, "per": "1y"},
            ],
            "quiet_hours": [{"start": "21:00", "end": "08:00", "days": ["sunday"]}],
            "frequency_cap": {},
        },
    )
    assert set(problems(bad)) == {
        "body.time_zone",
        "body.frequency_caps.1.channel",
        "body.frequency_caps.2.per",
        "body.quiet_hours.0.days.0",
        "body.frequency_cap",
    }
    twice = await api.put(
        "/v1/send-rules",
        json={"frequency_caps": [{"channel": "sms", "max": 2, "per": "1d"}] * 2},
    )
    assert "two caps for sms per 1d" in problems(twice)["body.frequency_caps"]
    rules = {
        "time_zone": "Europe/Warsaw",
        "frequency_caps": [
            {"channel": "email", "max": 3, "per": "1d"},
            {"channel": "email", "max": 10, "per": "1w"},
        ],
        "quiet_hours": [{"start": "21:00", "end": "08:00", "channels": ["sms"]}],
    }
    saved = ok(await api.put("/v1/send-rules", json=rules))
    assert saved == ok(await api.get("/v1/send-rules"))
    assert saved["frequency_caps"][1] == {"channel": "email", "max": 10, "per": "1w"}
    assert saved["quiet_hours"] == [{"start": "21:00:00", "end": "08:00:00", "channels": ["sms"]}]
    assert list(problems(await api.get("/v1/send-rules/holds?since=2026-01-01T00:00"))) == [
        "query.since"
    ]

    journey = sms_journey("rules", "hello", on_cap="later", quiet_hours=[{"start": "9"}])
    journey["steps"]["s0"].update(transactional=True, on_cap="skip", expires_after="0s")
    ok(await api.post("/v1/journeys", json=journey), 201)  # a draft may be unfinished
    refused = problems(await api.post("/v1/journeys/rules/validate"))
    assert refused == {
        "on_cap": "Input should be 'delay' or 'skip'",
        "quiet_hours.0.start": "Input should be in a valid time format, input is too short",
        "quiet_hours.0.end": "Field required",
        "steps.s0.expires_after": "expires_after must be positive",
    }
    journey = sms_journey("rules", "hello")
    journey["steps"]["s0"].update(transactional=True, on_cap="skip")
    ok(await api.put("/v1/journeys/rules/draft", json=journey))
    refused = problems(await api.post("/v1/journeys/rules/validate"))
    assert refused == {"steps.s0": "a transactional send is never capped: on_cap does not apply"}


async def test_a_contact_whose_time_zone_changes_while_held_is_planned_again(
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
    api: httpx.AsyncClient,
) -> None:
    """Held at 22:00 in Warsaw until 08:00 there; moved to Tokyo (06:00 there at that
    moment), the send is decided again and goes at 08:00 in Tokyo instead."""
    await set_rules(sessions, NIGHTS)
    day = (await env.get_current_time()).date() + timedelta(days=2)
    journey = sms_journey("night", "hello")
    journey["start"] = "until"
    journey["steps"]["until"] = {
        "type": "wait",
        "until": f"{day}T22:00:00",
        "time_zone": "Europe/Warsaw",
        "next": "s0",
    }
    await publish_journey(sessions, journey)
    contact = await make_contact(sessions, phone="+48500100205", time_zone="Europe/Warsaw")
    _, handle = await start(sessions, client, task_queue, "night", contact)
    evening = datetime.fromisoformat(f"{day}T22:00:00+01:00")
    # Past 22:00 and the wait's wake spread (up to WAKE_SPREAD after it, by enrollment id).
    await env.sleep(evening - await env.get_current_time() + WAKE_SPREAD + timedelta(minutes=1))
    async with asyncio.timeout(15):
        while not ((await progress(handle)).path[-1].outcome or "").startswith("held"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert (await progress(handle)).path[-1].outcome == (
        "held: quiet hours until 08:00 Europe/Warsaw"
    )

    ok(await api.patch(f"/v1/contacts/{contact}", json={"time_zone": "Asia/Tokyo"}))
    result = await finish(env, handle)

    (claim,) = await claims(sessions, contact)
    tokyo_eight = datetime.fromisoformat(f"{day + timedelta(days=1)}T08:00:00+09:00")
    assert tokyo_eight <= claim.at < tokyo_eight + timedelta(minutes=1)
    assert result.path[-1].outcome == (
        "sent (held: quiet hours until 08:00 Europe/Warsaw; "
        "held: quiet hours until 08:00 Asia/Tokyo)"
    )
    timeline = ok(await api.get(f"/v1/contacts/{contact}/timeline", params={"kinds": "send_held"}))
    assert [e["summary"] for e in timeline["items"]] == [
        "SMS (journey night, step s0) held: quiet hours until 08:00 Asia/Tokyo",
        "SMS (journey night, step s0) held: quiet hours until 08:00 Europe/Warsaw",
    ]


def dst_days(zone: str, year: int) -> tuple[date, date]:
    """The days the clocks spring forward and fall back in `zone` in `year`."""
    tz = ZoneInfo(zone)
    changes = []
    day = date(year, 1, 1)
    while day.year == year:
        noon = datetime.combine(day, time(12), tzinfo=tz)
        if noon.utcoffset() != (noon - timedelta(days=1)).utcoffset():
            changes.append(day)
        day += timedelta(days=1)
    spring, fall = changes
    return spring, fall


@pytest.mark.parametrize("zone", ["Europe/Warsaw", "America/New_York"])
@pytest.mark.parametrize("change", ["spring_forward", "fall_back"])
async def test_quiet_hours_across_dst_hold_until_local_eight(
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
    zone: str,
    change: str,
) -> None:
    """A send at 22:00 the evening before the clocks change goes at 08:00 local time the
    next morning: 9 hours later in spring, 11 in autumn."""
    await set_rules(sessions, NIGHTS)
    year = (await env.get_current_time()).year + 1
    spring, fall = dst_days(zone, year)
    night_of = spring if change == "spring_forward" else fall
    evening = datetime.combine(night_of - timedelta(days=1), time(22))
    journey = sms_journey("dst", "hello")
    journey["start"] = "until"
    journey["steps"]["until"] = {
        "type": "wait",
        "until": evening.isoformat(),
        "time_zone": zone,
        "next": "s0",
    }
    await publish_journey(sessions, journey)
    contact = await make_contact(sessions, phone="+15550100", time_zone=zone)

    outcome = await run_journey(sessions, client, env, task_queue, "dst", contact)

    (claim,) = await claims(sessions, contact)
    sent_at = evening.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)
    expected = datetime.combine(night_of, time(8), tzinfo=ZoneInfo(zone))
    assert expected <= claim.at < expected + timedelta(minutes=1), claim.at
    hours = 9 if change == "spring_forward" else 11
    assert expected.astimezone(UTC) - sent_at == timedelta(hours=hours)
    assert outcome == f"sent (held: quiet hours until 08:00 {zone})"


async def test_a_send_held_by_a_paused_journey_past_its_expiry_is_skipped(
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
    api: httpx.AsyncClient,
) -> None:
    """Paused for two days with the coupon due; resumed, it is not sent a day late."""
    coupon = sms_journey("coupon", "coupon", wait="1h")
    coupon["steps"]["s0"]["expires_after"] = "1d"
    await publish_journey(sessions, coupon)
    contact = await make_contact(sessions, phone="+48500100206")
    _, handle = await start(sessions, client, task_queue, "coupon", contact)
    await reach_step(handle, "w")
    ok(await api.post("/v1/journeys/coupon/pause"))
    await env.sleep(timedelta(hours=1, minutes=1))
    await reach_step(handle, "s0")
    await env.sleep(timedelta(days=2))
    ok(await api.post("/v1/journeys/coupon/resume"))

    result = await finish(env, handle)

    assert result.path[-1].outcome == "skipped: expired: not sent within 1d (expires_after)"
    assert await claims(sessions, contact) == []
    (expired,) = await holds(sessions, contact)
    assert (expired.rule, expired.action) == ("expired", "skipped")
