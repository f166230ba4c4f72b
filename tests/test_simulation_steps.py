"""Simulations of the split, webhook, assign_owner and send_push steps, and of the send rules:
nothing is called, written or taken in Postgres (issue 14 with issues 12 and 13)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from nurture.audience.devices import add_device
from nurture.db.engine import SessionFactory
from nurture.owners import Owner, save_team
from nurture.sending.rules import SendRules, save_send_rules
from nurture.sending.windows import WEEKDAYS
from nurture.simulation.report import as_text
from tests.loopback import serve
from tests.support import make_contact, publish_journey
from tests.test_simulation import about, run

TABLES = [
    "contacts", "messages", "events", "enrollments", "enrollment_steps", "outbox_messages",
    "contact_changes", "applied_operations", "owner_assignments", "send_claims", "send_holds",
    "device_tokens", "timeline_notes",
]  # fmt: skip


async def counts(sessions: SessionFactory) -> dict[str, Any]:
    async with sessions() as session:
        found: dict[str, Any] = {
            t: int(await session.scalar(text(f"SELECT count(*) FROM {t}"))) for t in TABLES
        }
        found["turns"] = (await session.execute(text("SELECT key, turn FROM owner_teams"))).all()
    return found


def tour(crm: str) -> dict[str, Any]:
    return {
        "key": "tour",
        "name": "Tour",
        "start": "split",
        "steps": {
            "split": {
                "type": "split",
                "paths": [
                    {"name": "a", "weight": 50, "next": "assign"},
                    {"name": "b", "weight": 50, "next": "assign"},
                ],
            },
            "assign": {"type": "assign_owner", "team": "sales", "next": "crm"},
            "crm": {
                "type": "webhook",
                "url": f"{crm}/leads/{{{{ contact.email }}}}",
                "headers": {"X-Owner": "{{ fields.owner.name }}"},
                "body": {"owner": "{{ fields.owner.email }}"},
                "save": {"crm_id": "lead.id"},
                "next": "push",
            },
            "push": {
                "type": "send_push",
                "title": "Hi from {{ fields.owner.name }}",
                "body": "Lead {{ fields.crm_id }}",
                "data": {"link": "app://lead/{{ fields.crm_id }}"},
            },
        },
    }


async def test_split_owner_webhook_and_push_simulated_without_a_trace(
    sessions: SessionFactory,
) -> None:
    requests: list[str] = []

    async def anything(request: Request) -> JSONResponse:
        requests.append(request.url.path)
        return JSONResponse({"lead": {"id": "real"}})

    app = Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST", "PUT"])])
    owners = [Owner("Ann", "ann@sales.example"), Owner("Bob", "bob@sales.example")]
    await save_team(sessions, "sales", "Sales", "round_robin", owners)
    async with serve(app) as crm:
        await publish_journey(sessions, tour(crm))
        stored = await make_contact(sessions, external_id="ada", email="ada@example.com")
        await add_device(sessions, stored, "ada-phone")
        before = await counts(sessions)
        request = {
            "contacts": [
                {"contact": "ada"},
                {"email": "bo@example.com", "push_tokens": ["t1", "t2"]},
                {"email": "cy@example.com"},
            ],
            "webhooks": {"crm": {"status": 201, "json": {"lead": {"id": "L-7"}}}},
        }
        report = await run(sessions, "tour", **request)
        again = await run(sessions, "tour", **request)
        assert requests == []  # the loopback CRM was never called
    assert await counts(sessions) == before  # no row, no turn taken

    ada, bo, cy = report.contacts
    assert [s.step for s in ada.path] == ["split", "assign", "crm", "push"]
    assert ada.status == "completed"
    # Turns follow on from the team's next one, in the order of the request; the same again.
    assert [c.path[1].outcome for c in report.contacts] == [
        "assigned Ann (turn 1)",
        "assigned Bob (turn 2)",
        "assigned Ann (turn 3)",
    ]
    assert [c.path[1].outcome for c in again.contacts] == [
        c.path[1].outcome for c in report.contacts
    ]
    hook = ada.path[2].webhook
    assert hook is not None
    assert hook.would_call == f"POST {crm}/leads/ada@example.com"
    assert hook.headers["X-Owner"] == "Ann"
    assert hook.body == {"owner": "ann@sales.example"}
    assert (hook.response_status, hook.saved, hook.attempts) == (201, {"crm_id": "L-7"}, 1)
    assert ada.path[2].outcome == "HTTP 201, saved crm_id"
    assert ada.contact_at_end.fields["crm_id"] == "L-7"
    assert ada.contact_at_end.fields["owner"] == {
        "name": "Ann",
        "email": "ann@sales.example",
        "team": "sales",
    }
    push = ada.path[3].message
    assert push is not None
    assert (push.channel, push.status, push.to) == ("push", "sent", "1 device(s)")
    assert (push.subject, push.text, push.data) == (
        "Hi from Ann",
        "Lead L-7",
        {"link": "app://lead/L-7"},
    )
    assert ada.path[3].outcome == "sent to 1 device(s)"
    assert bo.path[3].outcome == "sent to 2 device(s)"
    assert cy.path[3].outcome == "skipped: no_device_token"
    assert (ada.sends, bo.sends, cy.sends) == (1, 1, 0)
    words = as_text(report)
    assert f"would call POST {crm}/leads/ada@example.com" in words


async def test_a_scripted_webhook_failure_takes_the_failure_path(sessions: SessionFactory) -> None:
    journey = tour("https://crm.example.com")
    journey["steps"]["crm"].update(retries=2, on_failure="fallback")
    journey["steps"]["fallback"] = {"type": "exit", "reason": "crm_down"}
    await save_team(sessions, "sales", "Sales", "round_robin", [Owner("Ann", "a@x.io")])
    await publish_journey(sessions, journey)
    report = await run(
        sessions,
        "tour",
        contacts=[{"email": "a@example.com"}],
        webhooks={"crm": {"status": 503}},
    )
    (contact,) = report.contacts
    assert [s.step for s in contact.path] == ["split", "assign", "crm", "fallback"]
    assert contact.reason == "crm_down"
    hook = contact.path[2].webhook
    assert hook is not None and (hook.response_status, hook.attempts) == (503, 3)


async def test_a_third_sms_in_a_day_is_delayed_under_a_two_a_day_cap(
    sessions: SessionFactory,
) -> None:
    async with sessions.begin() as session:
        rules = {"frequency_caps": [{"channel": "sms", "max": 2, "per": "24h"}]}
        await save_send_rules(session, SendRules.model_validate(rules))
    steps = {
        f"s{i}": {"type": "send_sms", "template": f"t{i}", "next": f"s{i + 1}" if i < 2 else None}
        for i in range(3)
    }
    await publish_journey(
        sessions, {"key": "three", "name": "Three", "start": "s0", "steps": steps}
    )
    before = await counts(sessions)

    report = await run(sessions, "three", contacts=[{"phone": "+48500100200"}])

    assert await counts(sessions) == before
    (contact,) = report.contacts
    first, second, third = contact.path
    assert (first.outcome, second.outcome) == ("sent", "sent")
    assert third.outcome is not None
    assert third.outcome.startswith("sent (delayed: frequency cap sms 2/1d until ")
    (hold,) = third.holds
    assert (hold.rule, hold.action) == ("frequency_cap", "delayed")
    assert hold.until is not None and about(hold.offset, "")
    assert third.left_at is not None and third.left_at - third.entered_at >= (hold.until - hold.at)
    assert about(contact.duration, "1d")
    assert third.message is not None and third.message.status == "sent"
    assert contact.send_holds == {"delayed": 1}
    assert contact.sends == 3
    assert "delayed: frequency cap sms 2/1d until" in as_text(report)


async def test_quiet_hours_hold_a_simulated_send(sessions: SessionFactory) -> None:
    """Whole-day quiet hours on every day but the one after tomorrow (UTC, the workspace's
    time zone): the send waits for that day's midnight."""
    free = datetime.now(UTC).date() + timedelta(days=2)
    days = [d for i, d in enumerate(WEEKDAYS) if i != free.weekday()]
    async with sessions.begin() as session:
        rules = {"quiet_hours": [{"start": "00:00", "end": "00:00", "days": days}]}
        await save_send_rules(session, SendRules.model_validate(rules))
    journey = {
        "key": "one",
        "name": "One",
        "start": "s0",
        "steps": {"s0": {"type": "send_sms", "template": "hello"}},
    }
    await publish_journey(sessions, journey)
    report = await run(sessions, "one", contacts=[{"phone": "+48500100201"}])
    (contact,) = report.contacts
    (step,) = contact.path
    assert step.outcome is not None
    assert step.outcome.startswith(f"sent (held: quiet hours until {free} 00:00 UTC")
    midnight = datetime.combine(free, time(0), tzinfo=UTC)
    assert step.left_at is not None and midnight <= step.left_at < midnight + timedelta(minutes=1)
    assert contact.send_holds == {"held": 1}
