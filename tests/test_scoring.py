"""Lead scoring (issue 13): rules as data, the score kept by the change path, usable in
segments (a `score >= 50` segment starts its journey at once), decaying points."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, select
from temporalio.client import Client

from nurture import scoring
from nurture.audience.events import record_engagement
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, ContactChangeRecord, Message, ScorePoints, utcnow
from nurture.journeys.enrollments import EnrollmentOptions
from tests.support import enrolled_in, exits_at_once, make_contact, ok, problems, publish_journey

pytestmark = pytest.mark.usefixtures("worker")

HOT: dict[str, Any] = {
    "name": "Hot leads",
    "filter": {"type": "field", "field": "fields.score", "op": "gte", "value": 50},
}


async def _score(sessions: SessionFactory, external_id: str) -> Any:
    async with sessions() as session:
        contact = await session.scalar(
            select(Contact).where(col(Contact.external_id) == external_id)
        )
    assert contact is not None
    return contact.fields.get("score")


async def _rules(api: httpx.AsyncClient) -> None:
    rules = {
        "pricing": {"kind": "event", "match": {"name": "pricing_viewed"}, "points": 30},
        "vp": {
            "kind": "condition",
            "match": {"type": "field", "field": "job_title", "op": "contains", "value": "VP"},
            "points": 25,
        },
        "unsub-intent": {
            "kind": "event",
            "match": {"name": "survey", "where": {"answer": "no"}},
            "points": -10,
        },
    }
    for key, rule in rules.items():
        ok(await api.put(f"/v1/scoring-rules/{key}", json=rule), 201)


async def test_events_and_fields_move_the_score_through_the_change_path(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await _rules(api)
    ok(await api.put("/v1/contacts/lead-1", json={"fields": {"job_title": "Engineer"}}), 201)
    assert await _score(sessions, "lead-1") is None  # nothing earned, nothing written
    ok(await api.patch("/v1/contacts/ext:lead-1", json={"fields": {"job_title": "VP Sales"}}))
    assert await _score(sessions, "lead-1") == 25
    event = {"external_id": "lead-1", "name": "pricing_viewed", "idempotency_key": "pv-1"}
    ok(await api.post("/v1/events", json=event), 202)
    ok(await api.post("/v1/events", json=event), 202)  # the same event again: no new points
    assert await _score(sessions, "lead-1") == 55
    survey = {"external_id": "lead-1", "name": "survey", "properties": {"answer": "yes"}}
    ok(await api.post("/v1/events", json=survey), 202)  # `where` does not match
    survey["properties"] = {"answer": "no"}
    ok(await api.post("/v1/events", json=survey), 202)
    assert await _score(sessions, "lead-1") == 45
    ok(await api.patch("/v1/contacts/ext:lead-1", json={"fields": {"job_title": "Intern"}}))
    assert await _score(sessions, "lead-1") == 20  # the condition's points are held no more

    # Each move is part of the change that made it, in the change log.
    async with sessions() as session:
        changes = list(
            await session.scalars(
                select(col(ContactChangeRecord.changes)).order_by(col(ContactChangeRecord.id))
            )
        )
    moves = [c["fields"]["score"] for c in changes if "score" in c.get("fields", {})]
    assert moves == [[None, 25], [25, 55], [55, 45], [45, 20]]

    listed = ok(await api.get("/v1/scoring-rules"))
    assert [r["key"] for r in listed["items"]] == ["pricing", "unsub-intent", "vp"]
    assert listed["score_field"] == "score"


async def test_a_condition_rule_added_later_rescores_everyone(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/contacts/a", json={"fields": {"job_title": "VP"}}), 201)
    ok(await api.put("/v1/contacts/b", json={"fields": {"job_title": "CTO"}}), 201)
    await _rules(api)
    assert (await _score(sessions, "a"), await _score(sessions, "b")) == (25, None)
    assert (await api.delete("/v1/scoring-rules/vp")).status_code == 204
    assert await _score(sessions, "a") == 0


async def test_bad_rules_are_refused_with_the_place(api: httpx.AsyncClient) -> None:
    found = problems(await api.put("/v1/scoring-rules/x", json={"kind": "event", "points": 5}))
    assert any("match.name" in message for message in found.values()), found
    found = problems(
        await api.put(
            "/v1/scoring-rules/x",
            json={"kind": "condition", "match": {"type": "field", "field": "a"}, "points": 1},
        )
    )
    assert found, found


async def test_crossing_the_threshold_starts_the_segment_journey_at_once(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await _rules(api)
    ok(await api.put("/v1/segments/hot-leads", json=HOT), 201)
    await publish_journey(
        sessions,
        exits_at_once("sales-handoff", {"type": "segment_entered", "segment": "hot-leads"}),
    )
    ok(await api.put("/v1/contacts/lead-2", json={"fields": {"job_title": "VP"}}), 201)
    assert await enrolled_in(sessions, "sales-handoff") == []  # 25 points
    event = {"external_id": "lead-2", "name": "pricing_viewed"}
    ok(await api.post("/v1/events", json=event), 202)
    # No sweep, no relay: the event's own announcement started the journey.
    assert await enrolled_in(sessions, "sales-handoff") == ["lead-2"]


async def test_clicks_earn_points_that_decay(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, task_queue: str
) -> None:
    rule = {"kind": "click", "match": {"link": "demo"}, "points": 15, "decay_days": 7}
    ok(await api.put("/v1/scoring-rules/demo-click", json=rule), 201)
    contact_id = await make_contact(sessions, external_id="clicker")
    message_id = uuid.uuid4()
    async with sessions.begin() as session:
        session.add(
            Message(
                id=message_id,
                idempotency_key=f"x:{message_id}:1",
                contact_id=contact_id,
                channel="email",
                template="t",
                status="sent",
            )
        )
    options = EnrollmentOptions(task_queue)
    await record_engagement(sessions, client, message_id, "click", link="pricing", options=options)
    assert await _score(sessions, "clicker") is None  # another link
    await record_engagement(sessions, client, message_id, "click", link="demo", options=options)
    await record_engagement(sessions, client, message_id, "open", options=options)  # no rule
    assert await _score(sessions, "clicker") == 15

    assert await scoring.decay_once(sessions) == 0  # not expired yet
    async with sessions.begin() as session:  # eight days pass for these points
        await session.execute(update(ScorePoints).values(expires_at=utcnow() - timedelta(days=1)))
    assert await scoring.decay_once(sessions) == 1
    assert await _score(sessions, "clicker") == 0
    async with sessions() as session:
        last = await session.scalar(
            select(ContactChangeRecord)
            .where(col(ContactChangeRecord.contact_id) == contact_id)
            .order_by(col(ContactChangeRecord.id).desc())
        )
    assert last is not None and last.source == "scoring:decay"
    assert last.changes == {"fields": {"score": [15, 0]}}


async def test_a_csv_import_is_scored_like_any_other_change(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await _rules(api)
    text = (
        "external_id,email,job_title\r\nimp-1,a@example.com,VP Ops\r\nimp-2,b@example.com,Dev\r\n"
    )
    body = ok(
        await api.post(
            "/v1/contacts/import", content=text.encode(), headers={"Content-Type": "text/csv"}
        )
    )
    assert body["imported"] == 2
    assert (await _score(sessions, "imp-1"), await _score(sessions, "imp-2")) == (25, None)
