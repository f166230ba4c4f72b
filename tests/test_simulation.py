"""Simulations: the real enrollment workflow in virtual time, on stand-in activities."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert

from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, Suppression, Template
from nurture.simulation.prepare import simulate
from nurture.simulation.report import SimulationReport, as_text
from nurture.simulation.script import SimulationRequest
from tests.support import example, make_contact, make_lists, ok, problems, publish_journey

WELCOME_HTML = (
    '<p>Hi {{ fields.first_name | default("there") }}</p>'
    '<a data-link="shop" href="https://shop.example.com/?u={{ contact.external_id }}">Shop</a>'
    '<a href="mailto:help@example.com">Help</a>'
)


def about(offset: str | None, expected: str) -> bool:
    """An offset from entry, give or take the seconds the steps before it worked (the clock
    runs with the wall clock meanwhile; a loaded machine can make it more than one)."""
    return offset is not None and re.fullmatch(rf"{expected}(\d+s)?", offset) is not None


async def _find_contact(session: Any, ref: str, where: str) -> uuid.UUID | None:
    from api.contact_refs import find_contact_id

    return await find_contact_id(session, ref, where)


async def run(sessions: SessionFactory, journey: str, **request: Any) -> SimulationReport:
    return await simulate(
        sessions,
        journey,
        SimulationRequest.model_validate(request),
        _find_contact,
        "http://nurture.test",
    )


async def _quickstart(sessions: SessionFactory) -> None:
    await publish_journey(sessions, example("quickstart"))
    content = {"subject": "Welcome, {{ fields.first_name }}", "html": WELCOME_HTML, "text": "Hi"}
    async with sessions.begin() as session:
        await session.execute(
            insert(Template)
            .values(key="quickstart-welcome", channel="email", **content)
            .on_conflict_do_update(index_elements=["key", "channel"], set_=content)
        )


async def test_rendered_not_sent_and_timed_from_the_send(sessions: SessionFactory) -> None:
    await _quickstart(sessions)
    report = await run(
        sessions,
        "quickstart",
        contacts=[
            {
                "label": "clicker",
                "email": "a@example.com",
                "fields": {"first_name": "Ada"},
                "behaviour": [{"clicks": "welcome", "link": "shop", "after": "2m"}],
            },
            {"label": "idle", "email": "b@example.com"},
            {
                "label": "typo",
                "email": "c@example.com",
                "behaviour": [{"clicks": "welcome", "link": "shpo", "after": "1m"}],
            },
        ],
    )
    clicker, idle, typo = report.contacts
    assert [s.step for s in clicker.path] == ["welcome", "clicked_shop", "mark_interest", "thanks"]
    welcome = clicker.path[0].message
    assert welcome is not None
    assert (welcome.status, welcome.subject, welcome.to) == (
        "sent",
        "Welcome, Ada",
        "a@example.com",
    )
    assert [(link.name, link.url) for link in welcome.links] == [
        ("shop", "https://shop.example.com/?u=")
    ]  # mailto: links are never tracked
    assert clicker.path[1].waited == "2m" and clicker.path[1].outcome == "event simulated-0"
    assert clicker.path[2].changed == {
        "fields": {"interest": [None, "shop"]},
        "tags_added": ["clicked-shop"],
    }
    assert clicker.contact_at_end.tags == ["clicked-shop"]
    assert about(clicker.behaviour[0].offset, "2m") and clicker.behaviour[0].delivered
    assert [s.step for s in idle.path] == ["welcome", "clicked_shop", "reminder"]
    assert (idle.path[1].outcome, idle.path[1].waited) == ("timeout", "10m")
    assert about(idle.duration, "10m") and idle.status == "completed"
    assert "clicker: completed after 2m" in as_text(report)
    # A click on a link the message does not have cannot happen: said so, and it matches nothing.
    assert [s.step for s in typo.path][-1] == "reminder"
    assert typo.behaviour[0].delivered
    assert "welcome has no link named 'shpo' (its tracked links: shop)" in str(
        typo.behaviour[0].note
    )


async def test_a_simulation_leaves_no_trace(sessions: SessionFactory) -> None:
    """A contact copied from the database clicks, is changed and joins a list in the
    simulation: no row anywhere changes, the stored contact included."""
    await make_lists(sessions, "paid-customers")
    await publish_journey(sessions, example("benchmark-welcome"))
    contact_id = await make_contact(
        sessions, external_id="ada", fields={"customer_type": "lead"}, tags=["x"]
    )
    tables = [
        "contacts", "messages", "events", "enrollments", "enrollment_steps", "outbox_messages",
        "list_memberships", "contact_changes", "applied_operations", "timeline_notes",
    ]  # fmt: skip

    async def counts() -> dict[str, int]:
        async with sessions() as session:
            return {t: int(await session.scalar(text(f"SELECT count(*) FROM {t}"))) for t in tables}

    before = await counts()
    report = await run(
        sessions,
        "benchmark-welcome",
        version="live",
        contacts=[
            {
                "contact": "ada",
                "behaviour": [{"clicks": "welcome", "link": "purchase", "at": "1h"}],
            },
            {"email": "b@example.com"},
        ],
    )
    ada, other = report.contacts
    assert [s.step for s in ada.path][-2:] == ["mark_paid", "to_customers"]
    assert ada.contact_at_end.fields == {"customer_type": "paid customer"}
    assert ada.contact_at_end.lists == ["paid-customers"]
    assert [s.step for s in other.path][-1] == "follow_up"
    assert before["contacts"] == 1 and await counts() == before
    async with sessions() as session:
        stored = await session.get(Contact, contact_id)
        assert stored is not None
        assert (stored.fields, stored.tags) == ({"customer_type": "lead"}, ["x"])


async def test_branch_decision_shows_what_it_saw(sessions: SessionFactory) -> None:
    await make_lists(sessions, "paid-customers")
    await publish_journey(sessions, example("benchmark-welcome"))
    report = await run(
        sessions,
        "benchmark-welcome",
        contacts=[
            {
                "email": "a@example.com",
                "behaviour": [{"clicks": "welcome", "link": "blog", "after": "3h"}],
            },
            {
                "email": "b@example.com",
                "behaviour": [{"clicks": "welcome", "link": "purchase", "after": "2d"}],
            },
        ],
    )
    blog, late = report.contacts
    branch = blog.path[2]
    assert branch.step == "clicked_purchase" and about(branch.offset, "1d")
    assert branch.decision is not None
    assert (branch.decision.taken, branch.decision.next) == ("default", "follow_up")
    check = branch.decision.rules[0].checks[0]
    assert (check.condition, check.saw, check.result) == (
        "clicked link purchase in welcome at least 1x", 0, False,
    )  # fmt: skip
    # Clicked after the branch: too late to count, and said so.
    assert [s.step for s in late.path][-1] == "follow_up"
    assert late.behaviour[0].note == "the enrollment had ended by then"
    assert not late.behaviour[0].delivered


async def test_the_send_gate_applies(sessions: SessionFactory) -> None:
    """No address, revoked consent and a suppression skip a send as in production; an open of
    a message never sent does not happen."""
    await _quickstart(sessions)
    suppressed = await make_contact(sessions, external_id="bounced")
    async with sessions.begin() as session:
        session.add(
            Suppression(contact_id=suppressed, channel="email", reason="bounced", source="test")
        )
    report = await run(
        sessions,
        "quickstart",
        contacts=[
            {"label": "no address", "behaviour": [{"opens": "welcome", "after": "1m"}]},
            {"email": "r@example.com", "consent": {"email": "revoked"}},
            {"contact": "bounced"},
        ],
    )
    reasons = [c.path[0].message.reason for c in report.contacts if c.path[0].message]
    assert reasons == ["no_email_address", "email_consent_revoked", "email_bounced"]
    assert report.contacts[0].behaviour[0].note == "its message (welcome, send 1) was never sent"
    assert all(c.sends == 0 for c in report.contacts)


async def test_still_running_at_the_horizon(sessions: SessionFactory) -> None:
    await publish_journey(sessions, example("hubspot-nurture-goal"))
    report = await run(
        sessions,
        "hubspot-nurture-goal",
        horizon="3d",
        contacts=[{"email": "a@example.com", "fields": {"lifecycle_stage": "lead"}}],
    )
    contact = report.contacts[0]
    assert (contact.status, contact.reason) == ("running", "still at wait_3d at the horizon")
    assert contact.ended_at is None
    assert contact.goal is not None and not contact.goal.met


async def test_api_simulate(api: httpx.AsyncClient, sessions: SessionFactory) -> None:
    await _quickstart(sessions)
    ok(
        await api.put(
            "/v1/contacts/ada", json={"email": "ada@example.com", "fields": {"first_name": "Ada"}}
        ),
        201,
    )
    body = {"contacts": [{"contact": "ada", "fields": {"vip": True}}], "include_html": True}
    report = ok(await api.post("/v1/journeys/quickstart/simulate", json=body))
    contact = report["contacts"][0]
    assert (report["version"], contact["contact"], contact["status"]) == (
        "draft",
        "ada",
        "completed",
    )
    welcome = contact["path"][0]["message"]
    assert welcome["subject"] == "Welcome, Ada" and "Hi Ada" in welcome["html"]
    assert welcome["links"] == [{"name": "shop", "url": "https://shop.example.com/?u=ada"}]
    assert contact["contact_at_end"]["fields"] == {"first_name": "Ada", "vip": True}

    live = ok(await api.post("/v1/journeys/quickstart/simulate?version=1", json=body))
    assert live["version"] == "1"
    missing = await api.post("/v1/journeys/quickstart/simulate?version=7", json=body)
    assert missing.status_code == 404, missing.text
    assert (await api.post("/v1/journeys/nope/simulate", json=body)).status_code == 404


async def test_api_simulate_refuses_what_does_not_fit(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await _quickstart(sessions)
    wrong = {
        "contacts": [
            {"contact": "nobody"},
            {
                "behaviour": [
                    {"opens": "clicked_shop", "after": "1h"},
                    {"clicks": "nope", "at": "1h"},
                ]
            },
        ]
    }
    assert problems(await api.post("/v1/journeys/quickstart/simulate", json=wrong)) == {
        "contacts.0.contact": "no contact 'nobody'",
        "contacts.1.behaviour.0.opens": 'step "clicked_shop" (wait_for) sends nothing',
        "contacts.1.behaviour.1.clicks": 'the journey has no step "nope"',
    }
    two = {"contacts": [{"behaviour": [{"opens": "welcome", "event": "x", "at": "1h"}]}]}
    found = problems(await api.post("/v1/journeys/quickstart/simulate", json=two))
    assert list(found) == ["body.contacts.0.behaviour.0"]
    assert "exactly one of" in found["body.contacts.0.behaviour.0"]

    # A draft with problems: 422 listing them, as publish answers.
    draft = {**example("quickstart"), "start": "nowhere"}
    ok(await api.put("/v1/journeys/quickstart/draft", json=draft))
    found = problems(await api.post("/v1/journeys/quickstart/simulate", json={"contacts": [{}]}))
    published = problems(await api.post("/v1/journeys/quickstart/publish"))
    assert found == published and "start" in found
    # ... while the live version still simulates.
    ok(await api.post("/v1/journeys/quickstart/simulate?version=live", json={"contacts": [{}]}))


async def test_simulations_at_once_are_apart(sessions: SessionFactory) -> None:
    """Each runs on a server of its own, in a thread of its own: neither sees the other's
    contacts, behaviour or clock."""
    await _quickstart(sessions)
    clicks = {"clicks": "welcome", "link": "shop", "after": "1m"}
    first, second, third = await asyncio.gather(
        run(sessions, "quickstart", contacts=[{"email": "a@example.com", "behaviour": [clicks]}]),
        run(sessions, "quickstart", contacts=[{"email": "b@example.com"}]),
        run(sessions, "quickstart", contacts=[{"email": "c@example.com", "behaviour": [clicks]}]),
    )
    assert [s.step for s in first.contacts[0].path][-1] == "thanks"
    assert [s.step for s in second.contacts[0].path][-1] == "reminder"
    assert [s.step for s in third.contacts[0].path][-1] == "thanks"
    assert about(second.contacts[0].duration, "10m") and about(first.contacts[0].duration, "1m")


async def test_openapi_documents_simulate(api: httpx.AsyncClient) -> None:
    spec = ok(await api.get("/openapi.json"))
    operation = spec["paths"]["/v1/journeys/{key}/simulate"]["post"]
    assert {"200", "404", "422", "503"} <= set(operation["responses"])
    assert "SimulationRequest" in str(operation["requestBody"])
    # The simulation's schema names clash with no other: a clash renames both schemas after
    # their modules (nurture__simulation__report__...), and the other one's users see it.
    schemas = spec["components"]["schemas"]
    assert {"SimulationReport", "SimulatedContactReport", "SimulationBehaviour"} <= set(schemas)
    assert not [name for name in schemas if "simulation__" in name]


async def test_lists_exclusion_and_a_scripted_list_join(sessions: SessionFactory) -> None:
    await make_lists(sessions, "vip")
    definition = {
        "key": "vip-check",
        "name": "VIP check",
        "entry": {"exclusion_segment": "blocked"},
        "start": "pause",
        "steps": {
            "pause": {"type": "wait", "duration": "1d", "next": "is_vip"},
            "is_vip": {
                "type": "branch",
                "rules": [{"condition": {"type": "in_list", "list": "vip"}, "next": "mark"}],
            },
            "mark": {"type": "update_contact", "add_tags": ["vip-seen"]},
        },
    }
    await publish_journey(sessions, definition)
    report = await run(
        sessions,
        "vip-check",
        contacts=[
            {"label": "joins", "behaviour": [{"join_list": "vip", "at": "2h"}]},
            {"label": "blocked", "segments": ["blocked"]},
            {"label": "stays out"},
        ],
    )
    joins, blocked, out = report.contacts
    assert [s.step for s in joins.path] == ["pause", "is_vip", "mark"]
    decision = joins.path[1].decision
    assert decision is not None and decision.rules[0].checks[0].saw == ["vip"]
    assert joins.contact_at_end.tags == ["vip-seen"] and joins.contact_at_end.lists == ["vip"]
    assert [(c.by, c.changed) for c in joins.changes] == [
        ("behaviour 0", {"lists_joined": ["vip"]}),
        ("step mark", {"tags_added": ["vip-seen"]}),
    ]
    assert (blocked.status, blocked.reason, blocked.path) == ("not_enrolled", "excluded", [])
    assert [s.step for s in out.path] == ["pause", "is_vip"]
    assert out.path[1].decision is not None and out.path[1].decision.taken == "default"


async def test_a_loop_until_an_event(sessions: SessionFactory) -> None:
    definition = {
        "key": "daily",
        "name": "Daily until stopped",
        "start": "day",
        "steps": {
            "day": {"type": "wait", "duration": "1d", "next": "stopped"},
            "stopped": {
                "type": "branch",
                "rules": [{"condition": {"type": "event", "name": "stop"}, "next": "bye"}],
                "default": "day",
            },
            "bye": {"type": "exit", "reason": "stopped"},
        },
    }
    await publish_journey(sessions, definition)
    report = await run(
        sessions, "daily", contacts=[{"behaviour": [{"event": "stop", "at": "9d12h"}]}]
    )
    contact = report.contacts[0]
    assert (contact.status, contact.reason) == ("exited", "stopped")
    assert [s.step for s in contact.path] == ["day", "stopped"] * 10 + ["bye"]
    assert contact.path[-2].visit == 10 and about(contact.path[-2].offset, "10d")
    saw = [s.decision.rules[0].checks[0].saw for s in contact.path if s.decision]
    assert saw == [0] * 9 + [1]
