"""Enrollments and events through the HTTP API, on the real worker and Postgres."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import col
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.contracts import EnrollmentResult
from nurture.db.engine import SessionFactory, session_factory
from nurture.db.models import BulkEnrollment, ContactList, Event, ListMembership, Message
from nurture.journeys.bulk import start_bulk_enrollment
from nurture.settings import Settings
from tests.support import (
    app_client,
    enroll_awaiting_click,
    example,
    finish,
    make_contact,
    make_lists,
    publish_journey,
    reach_step,
    sent_templates,
)

pytestmark = pytest.mark.usefixtures("worker")


def handle_of(client: Client, body: dict[str, Any]) -> Any:
    return client.get_workflow_handle(body["workflow_id"], result_type=EnrollmentResult)


async def test_enroll_is_idempotent_and_traceable(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, env: WorkflowEnvironment
) -> None:
    await make_lists(sessions, "paid-customers")
    await publish_journey(sessions, example("benchmark-welcome"))
    contact_id = await make_contact(sessions, external_id="crm-1")

    first = await api.post(
        "/v1/enrollments", json={"journey_key": "benchmark-welcome", "external_id": "crm-1"}
    )
    again = await api.post(
        "/v1/enrollments", json={"journey_key": "benchmark-welcome", "contact_id": str(contact_id)}
    )

    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    body = first.json()
    assert body["contact_id"] == str(contact_id)
    assert body["workflow_id"] == f"journey:benchmark-welcome:contact:{contact_id}"
    assert body["temporal_url"] == (
        f"http://temporal-ui.test/namespaces/default/workflows/"
        f"journey%3Abenchmark-welcome%3Acontact%3A{contact_id}"
    )
    assert "@" not in body["workflow_id"]  # no PII in workflow ids

    handle = handle_of(client, body)
    await finish(env, handle)
    traced = (await api.get(f"/v1/enrollments/{body['id']}")).json()
    assert traced["status"] == "completed"
    assert [p["step"] for p in traced["path"]] == [
        "welcome", "wait_1d", "clicked_purchase", "follow_up",
    ]  # fmt: skip
    assert traced["path"][0]["outcome"] == "sent"
    assert [(m["step"], m["template"], m["status"]) for m in traced["messages"]] == [
        ("welcome", "welcome", "sent"),
        ("follow_up", "welcome-follow-up", "sent"),
    ]

    by_contact = (await api.get("/v1/enrollments", params={"contact_id": str(contact_id)})).json()
    by_journey = await api.get("/v1/enrollments", params={"journey_key": "benchmark-welcome"})
    assert [e["id"] for e in by_contact["items"]] == [body["id"]]
    assert [e["id"] for e in by_journey.json()["items"]] == [body["id"]]


async def test_enroll_errors(api: httpx.AsyncClient, sessions: SessionFactory) -> None:
    await publish_journey(sessions, example("hubspot-nurture-goal"))
    contact_id = await make_contact(sessions)

    unknown_journey = await api.post(
        "/v1/enrollments", json={"journey_key": "nope", "contact_id": str(contact_id)}
    )
    unknown_contact = await api.post(
        "/v1/enrollments",
        json={"journey_key": "hubspot-nurture-goal", "contact_id": str(uuid.uuid4())},
    )
    both = await api.post(
        "/v1/enrollments",
        json={"journey_key": "x", "contact_id": str(contact_id), "external_id": "e"},
    )
    unknown_enrollment = await api.get(f"/v1/enrollments/{uuid.uuid4()}")

    assert unknown_journey.status_code == 404
    assert unknown_journey.json() == {"error": "not_found", "detail": "no journey 'nope'"}
    assert unknown_contact.status_code == 404
    assert both.status_code == 422
    assert both.json()["error"] == "invalid_request"
    assert "exactly one of contact_id, external_id" in both.json()["detail"][0]["message"]
    assert unknown_enrollment.status_code == 404
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Message)) == 0


async def test_unenroll_through_the_api(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, env: WorkflowEnvironment
) -> None:
    await publish_journey(sessions, example("hubspot-nurture-goal"))
    contact_id = await make_contact(sessions)
    created = (
        await api.post(
            "/v1/enrollments",
            json={"journey_key": "hubspot-nurture-goal", "contact_id": str(contact_id)},
        )
    ).json()
    handle = handle_of(client, created)
    await reach_step(handle, "wait_2d")

    response = await api.post(f"/v1/enrollments/{created['id']}/unenroll")
    result = await finish(env, handle)

    assert response.status_code == 202
    assert (result.status, result.reason) == ("exited", "unenrolled")
    traced = (await api.get(f"/v1/enrollments/{created['id']}")).json()
    assert (traced["status"], traced["exit_reason"]) == ("exited", "unenrolled")
    assert await sent_templates(sessions, contact_id) == ["nurture-intro"]


async def test_custom_event_reaches_the_waiting_enrollment_once(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, env: WorkflowEnvironment
) -> None:
    await publish_journey(sessions, example("register-coupon"))
    contact_id = await make_contact(sessions, external_id="u-7")

    # The "registered" event starts the event-triggered journey...
    registered = await api.post("/v1/events", json={"external_id": "u-7", "name": "registered"})
    assert registered.status_code == 202, registered.text
    [enrollment_id] = registered.json()["started_enrollments"]
    enrollment = (await api.get(f"/v1/enrollments/{enrollment_id}")).json()
    handle = handle_of(client, enrollment)
    await reach_step(handle, "logged_in")

    # ...and "login", sent twice by a retrying client, is stored and counted once.
    login = {"external_id": "u-7", "name": "login", "idempotency_key": "login-1"}
    first = await api.post("/v1/events", json=login)
    second = await api.post("/v1/events", json=login)
    result = await finish(env, handle)

    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
    assert first.json()["signalled"] == 1
    assert first.json()["id"] == second.json()["id"]
    assert [p.step for p in result.path] == ["welcome", "logged_in", "done"]
    assert await sent_templates(sessions, contact_id) == ["welcome"]
    async with sessions() as session:
        names = (
            await session.scalars(select(col(Event.name)).order_by(col(Event.received_at)))
        ).all()
    assert names == ["registered", "login"]


async def test_a_click_posted_for_a_message_takes_the_clicked_branch(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, env: WorkflowEnvironment
) -> None:
    waiting = await enroll_awaiting_click(api, sessions, client)
    created, handle, message_id = waiting.enrollment, waiting.handle, waiting.message_id

    click = await api.post(
        f"/v1/messages/{message_id}/engagements", json={"kind": "click", "link": "purchase"}
    )
    result = await finish(env, handle)

    assert click.status_code == 202, click.text
    assert click.json()["signalled"] == 1
    assert [p.step for p in result.path][-2:] == ["mark_paid", "to_customers"]
    contact = (await api.get(f"/v1/enrollments/{created['id']}")).json()
    assert contact["status"] == "completed"


TAGGER = {
    "key": "tagger",
    "name": "Tag everyone",
    "start": "tag",
    "steps": {"tag": {"type": "update_contact", "add_tags": ["bulk-enrolled"]}},
}


async def _members(sessions: SessionFactory, list_key: str, count: int) -> list[uuid.UUID]:
    await make_lists(sessions, list_key)
    ids = [await make_contact(sessions) for _ in range(count)]
    async with sessions.begin() as session:
        list_id = await session.scalar(
            select(col(ContactList.id)).where(col(ContactList.key) == list_key)
        )
        assert list_id is not None
        for contact_id in ids:
            session.add(ListMembership(list_id=list_id, contact_id=contact_id))
    return ids


async def _wait_bulk_done(api: httpx.AsyncClient, bulk_id: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            body: dict[str, Any] = (await api.get(f"/v1/bulk-enrollments/{bulk_id}")).json()
            if body["status"] == "completed":
                return body
            await asyncio.sleep(0.1)


async def test_bulk_enroll_a_list_reports_progress_and_enrolls_each_once(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, task_queue: str
) -> None:
    await publish_journey(sessions, TAGGER)
    ids = await _members(sessions, "bulk-list", 23)

    # Small pages, to cross page boundaries; then the same list again through the API.
    bulk = await start_bulk_enrollment(sessions, client, task_queue, "tagger", "bulk-list", 5)
    first = await _wait_bulk_done(api, str(bulk.id))
    started = await api.post("/v1/journeys/tagger/bulk-enrollments", json={"list": "bulk-list"})
    second = await _wait_bulk_done(api, started.json()["id"])

    assert started.status_code == 202
    assert (first["total"], first["done"], first["enrolled"], first["skipped"]) == (23, 23, 23, 0)
    assert (second["total"], second["done"], second["enrolled"], second["skipped"]) == (
        23, 23, 0, 23,
    )  # fmt: skip
    async with sessions() as session:
        rows = (await session.execute(select(func.count()).select_from(BulkEnrollment))).scalar()
        enrolled = await session.scalar(
            select(func.count(func.distinct(col(Message.contact_id))))  # no sends in this journey
        )
    assert rows == 2
    assert enrolled == 0
    listing = await api.get("/v1/enrollments", params={"journey_key": "tagger", "limit": 500})
    assert sorted(e["contact_id"] for e in listing.json()["items"]) == sorted(map(str, ids))


async def test_bulk_enroll_unknown_list_is_404(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await publish_journey(sessions, TAGGER)
    response = await api.post("/v1/journeys/tagger/bulk-enrollments", json={"list": "missing"})
    assert response.status_code == 404
    assert response.json()["detail"] == "no list 'missing'"


async def test_requests_never_hold_two_pooled_connections(
    database_url: str, sessions: SessionFactory, client: Client, settings: Settings
) -> None:
    """With a pool of one connection, enrolling and posting events still work: a request that
    kept a connection while its service asked for another would wait on itself forever."""
    await publish_journey(sessions, example("hubspot-nurture-goal"))
    contact_id = await make_contact(sessions, external_id="solo")
    tiny = create_async_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=5)
    try:
        async with app_client(session_factory(tiny), client, settings, sessions) as http:
            enrolled = await http.post(
                "/v1/enrollments",
                json={"journey_key": "hubspot-nurture-goal", "external_id": "solo"},
            )
            event = await http.post("/v1/events", json={"external_id": "solo", "name": "visit"})
    finally:
        await tiny.dispose()

    assert enrolled.status_code == 201, enrolled.text
    assert enrolled.json()["contact_id"] == str(contact_id)
    assert event.status_code == 202, event.text
