"""POST /v1/events/batch: many custom events in one request, stored in one statement, each with
its own result; what a batch delivers is what the same events posted one by one deliver."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlmodel import col
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.schemas.events import MAX_BATCH_EVENTS
from nurture.audience import changes
from nurture.audience.segments.membership import observe
from nurture.contracts import EnrollmentResult
from nurture.db.engine import SessionFactory
from nurture.db.models import ContactChangeRecord, Event
from nurture.settings import get_settings
from tests.support import (
    all_enrollments_ended,
    enrolled_in,
    exits_at_once,
    finish,
    make_contact,
    problems,
    publish_journey,
)

pytestmark = pytest.mark.usefixtures("worker")

WAITING: dict[str, Any] = {
    "key": "batch-wait",
    "name": "Waits for a ping",
    "start": "ping",
    "steps": {
        "ping": {
            "type": "wait_for",
            "event": {"type": "custom", "name": "b-ping"},
            "timeout": "30d",
            "on_timeout": "timed_out",
        },
        "timed_out": {"type": "exit", "reason": "timed_out"},
    },
}


async def enroll(api: httpx.AsyncClient, contact: uuid.UUID) -> str:
    answer = await api.post(
        "/v1/enrollments", json={"journey_key": "batch-wait", "contact_id": str(contact)}
    )
    assert answer.status_code == 201, answer.text
    workflow_id: str = answer.json()["workflow_id"]
    return workflow_id


async def test_a_batch_is_stored_in_one_statement_and_each_event_has_its_result(
    counted_api: tuple[httpx.AsyncClient, list[str]],
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
) -> None:
    api, statements = counted_api
    await publish_journey(sessions, WAITING)
    first = await make_contact(sessions, external_id="b-1")
    second = await make_contact(sessions, external_id="b-2")
    third = await make_contact(sessions, external_id="b-3")
    workflows = [await enroll(api, contact) for contact in (first, second, third)]
    statements.clear()

    batch = [
        {"contact_id": str(first), "name": "b-ping"},
        {"external_id": "b-2", "name": "b-ping", "properties": {"plan": "pro"}},
        {"contact_id": str(third), "name": "b-ping", "idempotency_key": "k-3"},
        {"contact_id": str(third), "name": "b-ping", "idempotency_key": "k-3"},  # repeated
        {"contact_id": str(first), "name": "b-ping", "idempotency_key": "k-3"},  # another's key
        {"external_id": "nobody", "name": "b-ping"},
        {
            "external_id": "b-2",
            "name": "other",
            "properties": {"n": 1},
            "occurred_at": "2026-11-30T09:00:00Z",
        },
    ]
    answer = await api.post("/v1/events/batch", json={"events": batch})
    await asyncio.sleep(0.05)  # asyncpg calls its query loggers soon after, not at once

    assert answer.status_code == 207, answer.text  # some events were not recorded
    body = answer.json()
    assert [r["status"] for r in body["results"]] == [202, 202, 202, 202, 409, 404, 202]
    assert [r["index"] for r in body["results"]] == list(range(len(batch)))
    assert (body["recorded"], body["duplicates"], body["failed"]) == (4, 1, 2)
    results = body["results"]
    assert [r["event"]["signalled"] for r in results if r["event"] is not None] == [1, 1, 1, 0, 1]
    assert results[3]["event"]["duplicate"] is True
    assert results[3]["event"]["id"] == results[2]["event"]["id"]
    assert results[4]["error"]["error"] == "conflict"
    assert results[5]["error"] == {
        "error": "not_found",
        "detail": "no contact with external id 'nobody'",
    }
    assert results[1]["event"]["contact_id"] == str(second)
    # Every event of the batch was stored by one statement.
    assert sum(s.startswith("WITH i AS") for s in statements) == 1, statements

    # Each waiting enrollment got its event, so it left the wait by the "event" path.
    for workflow_id in workflows:
        handle = client.get_workflow_handle(workflow_id, result_type=EnrollmentResult)
        result = await finish(env, handle)
        assert [p.step for p in result.path] == ["ping"], result
        assert result.status == "completed", result
    async with sessions() as session:
        stored = (await session.execute(select(col(Event.contact_id), col(Event.name)))).all()
        # One contact's events were recorded as its changes in the order given.
        changes = (
            await session.scalars(
                select(col(ContactChangeRecord.changes))
                .where(col(ContactChangeRecord.contact_id) == second)
                .order_by(col(ContactChangeRecord.id))
            )
        ).all()
    assert sorted((c, n) for c, n in stored) == sorted(
        [(first, "b-ping"), (second, "b-ping"), (third, "b-ping"), (second, "other")]
    )
    assert [c["event"]["name"] for c in changes if "event" in c] == ["b-ping", "other"]


async def test_a_repeated_batch_records_and_delivers_nothing_twice(
    counted_api: tuple[httpx.AsyncClient, list[str]], sessions: SessionFactory
) -> None:
    api, _ = counted_api
    await publish_journey(sessions, WAITING)
    contacts = [await make_contact(sessions, external_id=f"r-{i}") for i in range(5)]
    for contact in contacts:
        await enroll(api, contact)
    batch = {
        "events": [
            {"contact_id": str(c), "name": "b-ping", "idempotency_key": f"r-{i}"}
            for i, c in enumerate(contacts)
        ]
    }
    first = await api.post("/v1/events/batch", json=batch)
    again = await api.post("/v1/events/batch", json=batch)

    assert first.status_code == 202, first.text
    assert (first.json()["recorded"], first.json()["duplicates"]) == (5, 0)
    assert [r["event"]["signalled"] for r in first.json()["results"]] == [1] * 5
    assert again.status_code == 202, again.text
    assert (again.json()["recorded"], again.json()["duplicates"]) == (0, 5)
    assert [r["event"]["signalled"] for r in again.json()["results"]] == [0] * 5
    assert [r["event"]["id"] for r in again.json()["results"]] == [
        r["event"]["id"] for r in first.json()["results"]
    ]
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Event)) == 5
        changes = await session.scalar(
            text("SELECT count(*) FROM contact_changes WHERE event_id IS NOT NULL")
        )
    assert changes == 5


async def test_a_batch_that_is_not_valid_is_refused_whole_naming_the_event(
    counted_api: tuple[httpx.AsyncClient, list[str]], sessions: SessionFactory
) -> None:
    api, _ = counted_api
    await make_contact(sessions, external_id="v-1")
    good = {"external_id": "v-1", "name": "visit"}
    empty = await api.post("/v1/events/batch", json={"events": []})
    too_many = await api.post("/v1/events/batch", json={"events": [good] * (MAX_BATCH_EVENTS + 1)})
    bad_one = await api.post(
        "/v1/events/batch", json={"events": [good, good, {"external_id": "v-1", "name": ""}]}
    )
    both_refs = await api.post(
        "/v1/events/batch",
        json={"events": [{"external_id": "v-1", "contact_id": str(uuid.uuid4()), "name": "x"}]},
    )
    # A number is not a date-time (pydantic would read it as seconds since 1970).
    epoch = await api.post("/v1/events/batch", json={"events": [{**good, "occurred_at": 0}]})
    epoch_one = await api.post("/v1/events", json={**good, "occurred_at": 1764547200})

    assert empty.status_code == 422 and "body.events" in problems(empty), empty.text
    assert too_many.status_code == 422 and "body.events" in problems(too_many), too_many.text
    assert bad_one.status_code == 422 and "body.events.2.name" in problems(bad_one), bad_one.text
    assert both_refs.status_code == 422, both_refs.text
    assert epoch.status_code == 422, epoch.text
    assert "ISO 8601" in problems(epoch)["body.events.0.occurred_at"], epoch.text
    assert epoch_one.status_code == 422 and "body.occurred_at" in problems(epoch_one)
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Event)) == 0


async def test_properties_over_the_limit_fail_their_event_alone(
    counted_api: tuple[httpx.AsyncClient, list[str]],
    sessions: SessionFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, _ = counted_api
    await make_contact(sessions, external_id="p-1")
    # Under the tests' 64 KB body limit (the limits are read from the process settings).
    monkeypatch.setenv("MAX_EVENT_PROPERTIES_BYTES", "2048")
    get_settings.cache_clear()
    try:
        over = "x" * 2048
        answer = await api.post(
            "/v1/events/batch",
            json={
                "events": [
                    {"external_id": "p-1", "name": "big", "properties": {"note": over}},
                    {"external_id": "p-1", "name": "small", "properties": {"note": "ok"}},
                ]
            },
        )
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

    assert answer.status_code == 207, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [413, 202]
    assert results[0]["error"]["error"] == "payload_too_large"
    assert results[1]["event"]["name"] == "small"
    async with sessions() as session:
        names = (await session.scalars(select(col(Event.name)))).all()
    assert names == ["small"]


async def test_one_contacts_events_re_check_its_segments_once(
    counted_api: tuple[httpx.AsyncClient, list[str]],
    sessions: SessionFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """All of a batch is stored before any event is announced, so the contact's segments are
    re-checked once, with its last new event, and see every event of the batch."""
    api, _ = counted_api
    buyers = {"name": "Buyers", "filter": {"type": "event", "name": "buy", "min_count": 3}}
    assert (await api.put("/v1/segments/buyers", json=buyers)).status_code == 201
    await publish_journey(
        sessions, exits_at_once("buyer-welcome", {"type": "segment_entered", "segment": "buyers"})
    )
    await make_contact(sessions, external_id="s-1")
    await make_contact(sessions, external_id="s-2")
    checked: list[uuid.UUID] = []

    async def counting(sessions: SessionFactory, contact_id: uuid.UUID) -> Any:
        checked.append(contact_id)
        return await observe(sessions, contact_id)

    monkeypatch.setattr(changes, "observe", counting)  # where the announcer calls it
    answer = await api.post(
        "/v1/events/batch",
        json={
            "events": [{"external_id": "s-1", "name": "buy"}] * 3
            + [{"external_id": "s-2", "name": "buy"}] * 2
        },
    )

    assert answer.status_code == 202, answer.text
    assert len(checked) == 2 and len(set(checked)) == 2, checked  # once per contact
    await all_enrollments_ended(sessions)
    assert await enrolled_in(sessions, "buyer-welcome") == ["s-1"]  # 3 buys: in; 2: not
