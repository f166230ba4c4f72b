"""Pure logic the workflow relies on: condition evaluation, event matching, wait arithmetic."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import TypeAdapter

from nurture.contracts import ContactFacts, EnrollmentEvent, ReceivedEvent
from nurture.journeys.conditions import Engagement, evaluate, matches_awaited
from nurture.journeys.definition import AwaitedEvent, Condition, WaitStep
from nurture.journeys.schedule import plan_wait

CONDITION: TypeAdapter[Condition] = TypeAdapter(Condition)
AWAITED: TypeAdapter[AwaitedEvent] = TypeAdapter(AwaitedEvent)
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def facts(**values: Any) -> ContactFacts:
    return ContactFacts(contact_id=uuid.uuid4(), **values)


def events(*specs: dict[str, Any]) -> list[ReceivedEvent]:
    return [
        ReceivedEvent(
            seq=i + 1,
            event=EnrollmentEvent(event_id=f"e{i}", **spec),
            received_at=NOW,
        )
        for i, spec in enumerate(specs)
    ]


def check(
    condition: dict[str, Any], contact: ContactFacts, engagement: Engagement | None = None
) -> bool:
    return evaluate(CONDITION.validate_python(condition), contact, engagement or Engagement([], {}))


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"type": "field", "field": "customer_type", "value": "Paid Customer"}, True),
        ({"type": "field", "field": "customer_type", "op": "contains", "value": "paid"}, True),
        ({"type": "field", "field": "customer_type", "op": "ne", "value": "lead"}, True),
        ({"type": "field", "field": "score", "op": "gte", "value": 10}, True),
        ({"type": "field", "field": "score", "op": "gt", "value": 10}, False),
        ({"type": "field", "field": "score", "op": "lt", "value": "11"}, False),  # no mixing
        ({"type": "field", "field": "renewal", "op": "lt", "value": "2027-01-01"}, True),
        ({"type": "field", "field": "plan", "op": "in", "value": ["gold", "Silver"]}, True),
        ({"type": "field", "field": "plan", "op": "not_in", "value": ["gold"]}, True),
        ({"type": "field", "field": "interests", "op": "contains", "value": "Shoes"}, True),
        ({"type": "field", "field": "missing", "op": "not_exists"}, True),
        ({"type": "field", "field": "missing", "op": "ne", "value": "x"}, True),
        ({"type": "field", "field": "missing", "value": "x"}, False),
        ({"type": "field", "field": "email", "op": "exists"}, True),
        ({"type": "field", "field": "phone", "op": "exists"}, False),
        ({"type": "tag", "tag": "VIP"}, True),
        ({"type": "in_list", "list": "newsletter"}, True),
        ({"type": "in_list", "list": "paid-customers"}, False),
        (
            {
                "type": "all",
                "conditions": [
                    {"type": "tag", "tag": "vip"},
                    {"type": "not", "condition": {"type": "in_list", "list": "paid-customers"}},
                ],
            },
            True,
        ),
        (
            {
                "type": "any",
                "conditions": [
                    {"type": "tag", "tag": "nope"},
                    {"type": "field", "field": "score", "value": 1},
                ],
            },
            False,
        ),
    ],
)
def test_contact_conditions(condition: dict[str, Any], expected: bool) -> None:
    contact = facts(
        has_email=True,
        fields={
            "customer_type": "paid customer",
            "score": 10,
            "renewal": "2026-12-31",
            "plan": "silver",
            "interests": ["shoes", "hats"],
        },
        tags=["vip"],
        lists=["newsletter"],
    )
    assert check(condition, contact) is expected


def test_engagement_conditions_count_the_latest_send_of_a_step() -> None:
    received = events(
        {"kind": "open", "step": "mail", "visit": 1},
        {"kind": "click", "step": "mail", "visit": 1, "link": "shop"},
        {"kind": "click", "step": "mail", "visit": 2, "link": "blog"},
        {"kind": "custom", "name": "purchase"},
        {"kind": "custom", "name": "purchase"},
    )
    engagement = Engagement(received, {"mail": 2})
    contact = facts()

    # Visit 2 of "mail" was clicked (on "blog") but not opened: the click counts as the open.
    assert check({"type": "opened", "step": "mail"}, contact, engagement)
    assert not check({"type": "clicked", "step": "mail", "link": "shop"}, contact, engagement)
    assert check({"type": "clicked", "step": "mail", "link": "blog"}, contact, engagement)
    # Without a step, every message of the journey counts.
    assert check({"type": "clicked", "min_count": 2}, contact, engagement)
    assert check({"type": "opened", "min_count": 2}, contact, engagement)
    assert not check({"type": "opened", "min_count": 3}, contact, engagement)
    assert check({"type": "event", "name": "purchase", "min_count": 2}, contact, engagement)
    assert not check({"type": "event", "name": "purchase", "min_count": 3}, contact, engagement)


@pytest.mark.parametrize(
    ("awaited", "event", "expected"),
    [
        ({"type": "open", "step": "mail"}, {"kind": "open", "step": "mail"}, True),
        ({"type": "open", "step": "mail"}, {"kind": "click", "step": "mail"}, True),
        ({"type": "open", "step": "mail"}, {"kind": "open", "step": "other"}, False),
        ({"type": "open", "step": "mail"}, {"kind": "open", "step": "mail", "visit": 1}, False),
        ({"type": "click", "step": "mail"}, {"kind": "open", "step": "mail"}, False),
        (
            {"type": "click", "step": "mail", "link": "shop"},
            {"kind": "click", "step": "mail", "link": "shop"},
            True,
        ),
        (
            {"type": "click", "step": "mail", "link": "shop"},
            {"kind": "click", "step": "mail", "link": "blog"},
            False,
        ),
        ({"type": "custom", "name": "login"}, {"kind": "custom", "name": "login"}, True),
        ({"type": "custom", "name": "login"}, {"kind": "custom", "name": "logout"}, False),
        (
            {"type": "custom", "name": "order", "where": {"plan": "gold"}},
            {"kind": "custom", "name": "order", "properties": {"plan": "gold", "total": 5}},
            True,
        ),
        (
            {"type": "custom", "name": "order", "where": {"plan": "gold"}},
            {"kind": "custom", "name": "order", "properties": {"plan": "silver"}},
            False,
        ),
    ],
)
def test_wait_for_matching(awaited: dict[str, Any], event: dict[str, Any], expected: bool) -> None:
    parsed = AWAITED.validate_python(awaited)
    assert matches_awaited(parsed, EnrollmentEvent(event_id="x", **event), {"mail": 2}) is expected


def wait(**fields: Any) -> WaitStep:
    return WaitStep.model_validate({"type": "wait", **fields})


def test_wait_for_a_duration() -> None:
    assert plan_wait(wait(duration="3d"), NOW, facts(), "UTC").until == NOW + timedelta(days=3)


def test_wait_until_a_local_date_time() -> None:
    step = wait(until="2026-12-01T09:00:00", time_zone="Europe/Warsaw")
    assert plan_wait(step, NOW, facts(), "UTC").until == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    # Without a zone on the step, the journey's zone reads the naive date-time.
    step = wait(until="2026-12-01T09:00:00")
    plan = plan_wait(step, NOW, facts(), "America/New_York")
    assert plan.until == datetime(2026, 12, 1, 14, 0, tzinfo=UTC)


def test_wait_until_a_date_field_in_the_contacts_zone() -> None:
    step = wait(until_field="renewal_date", offset="-7d", at="09:30")
    contact = facts(fields={"renewal_date": "2027-01-15"}, time_zone="Asia/Shanghai")
    plan = plan_wait(step, NOW, contact, "UTC")
    assert plan.until == datetime(2027, 1, 8, 1, 30, tzinfo=UTC)


def test_a_birthday_recurs_yearly() -> None:
    step = wait(until_field="birthday", at="10:00", yearly=True)
    before = plan_wait(step, NOW, facts(fields={"birthday": "1990-12-03"}), "UTC")
    after = plan_wait(step, NOW, facts(fields={"birthday": "1990-03-10"}), "UTC")
    leap = plan_wait(step, NOW, facts(fields={"birthday": "2000-02-29"}), "UTC")
    assert before.until == datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    assert after.until == datetime(2027, 3, 10, 10, 0, tzinfo=UTC)
    assert leap.until == datetime(2027, 2, 28, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "note"),
    [
        ({}, "skipped: contact has no renewal_date"),
        ({"renewal_date": "soon"}, "skipped: renewal_date is not a date ('soon')"),
    ],
)
def test_a_missing_or_bad_date_field_skips_the_wait(fields: dict[str, Any], note: str) -> None:
    plan = plan_wait(wait(until_field="renewal_date"), NOW, facts(fields=fields), "UTC")
    assert plan.until is None
    assert plan.note == note


def test_an_invalid_contact_zone_falls_back_to_the_journeys() -> None:
    step = wait(until_field="d", at="12:00")
    plan = plan_wait(
        step, NOW, facts(fields={"d": "2026-12-01"}, time_zone="Mars/Base"), "Europe/Warsaw"
    )
    assert plan.until == datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
