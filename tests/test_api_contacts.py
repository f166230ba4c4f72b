"""Contacts through the HTTP API: upsert, read, find, patch, delete; changes reach enrollments."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, Enrollment, Message
from tests.support import (
    example,
    finish,
    ok,
    problems,
    publish_journey,
    reach_step,
    sent_templates,
    start,
)

HUBSPOT = "hubspot-nurture-goal"


ADA = {
    "email": "ada@example.com",
    "phone": "+48601234567",
    "time_zone": "Europe/Warsaw",
    "fields": {"first_name": "Ada", "lifecycle_stage": "lead"},
    "tags": ["webinar"],
    "consent": {"email": "granted", "sms": "revoked"},
}


async def test_upsert_creates_then_updates_only_what_is_given(api: httpx.AsyncClient) -> None:
    created = await api.put("/v1/contacts/crm-1", json=ADA)
    updated = await api.put(
        "/v1/contacts/crm-1",
        json={"fields": {"plan": "pro"}, "tags": ["customer"], "consent": {"email": "revoked"}},
    )
    cleared = ok(await api.put("/v1/contacts/crm-1", json={"phone": None}))
    empty = await api.put("/v1/contacts/crm-2", json={})

    assert created.status_code == 201, created.text
    body = created.json()
    assert {k: body[k] for k in ADA} == ADA
    assert (body["external_id"], body["lists"], body["enrollments"]) == ("crm-1", [], [])
    assert updated.status_code == 200
    after = updated.json()
    assert after["id"] == body["id"]
    assert (after["email"], after["phone"], after["time_zone"]) == (
        "ada@example.com", "+48601234567", "Europe/Warsaw",
    )  # fmt: skip
    assert after["fields"] == {"plan": "pro"}  # replaced as a whole
    assert after["tags"] == ["customer"]
    assert after["consent"] == {"email": "revoked", "sms": "revoked"}  # merged per channel
    assert cleared["phone"] is None and cleared["email"] == "ada@example.com"
    assert empty.status_code == 201
    assert (empty.json()["email"], empty.json()["fields"]) == (None, {})


async def test_upsert_refuses_bad_input_and_writes_nothing(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    bad = await api.put(
        "/v1/contacts/crm-1",
        json={
            "email": "not-an-address",
            "phone": "0601 234 567",
            "time_zone": "Europe/Warszawa",
            "fields": {"email": "x@example.com"},
            "consent": {"email": "maybe"},
            "colour": "blue",
        },
    )

    found = problems(bad)
    assert bad.json()["error"] == "invalid_request"
    assert set(found) == {
        "body.email",
        "body.phone",
        "body.time_zone",
        "body.fields",
        "body.consent.email",
        "body.colour",
    }
    assert "unknown time zone 'Europe/Warszawa'" in found["body.time_zone"]
    assert "set standard attributes at the top level" in found["body.fields"]
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Contact)) == 0


async def test_get_and_find_contacts(api: httpx.AsyncClient) -> None:
    ada = ok(await api.put("/v1/contacts/crm-1", json=ADA), 201)
    ok(await api.put("/v1/contacts/crm-2", json={"email": "ada@example.com"}), 201)
    ok(await api.put("/v1/contacts/crm-3", json={"email": "bob@example.com"}), 201)

    read = ok(await api.get(f"/v1/contacts/{ada['id']}"))
    by_external_id = ok(await api.get("/v1/contacts", params={"external_id": "crm-1"}))
    by_email = ok(await api.get("/v1/contacts", params={"email": "ada@example.com"}))
    nobody = ok(await api.get("/v1/contacts", params={"external_id": "crm-404"}))
    page = ok(await api.get("/v1/contacts", params={"limit": 2, "offset": 2}))
    unknown = await api.get(f"/v1/contacts/{uuid.uuid4()}")
    by_reference = ok(await api.get("/v1/contacts/crm-1"))  # a bare external id
    not_a_uuid = await api.get("/v1/contacts/id:crm-1")

    assert read == ada
    assert by_external_id["items"] == [ada]
    assert [c["external_id"] for c in by_email["items"]] == ["crm-1", "crm-2"]
    assert nobody["items"] == []
    assert [c["external_id"] for c in page["items"]] == ["crm-3"]
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    assert by_reference == ada
    assert list(problems(not_a_uuid)) == ["path.ref"]


async def test_patch_merges_fields_and_changes_tags(api: httpx.AsyncClient) -> None:
    ada = ok(await api.put("/v1/contacts/crm-1", json=ADA), 201)
    url = f"/v1/contacts/{ada['id']}"

    patched = ok(
        await api.patch(
            url,
            json={
                "fields": {"lifecycle_stage": "customer", "first_name": None, "plan": "pro"},
                "add_tags": ["customer", "webinar"],
                "remove_tags": ["trial"],
                "time_zone": "America/New_York",
                "email": None,
                "consent": {"sms": "granted"},
            },
        )
    )
    removed_tag = ok(await api.patch(url, json={"remove_tags": ["webinar"]}))
    both = await api.patch(url, json={"add_tags": ["x"], "remove_tags": ["x"]})
    bad_zone = await api.patch(url, json={"time_zone": "Mars/Olympus"})
    unknown = await api.patch(f"/v1/contacts/{uuid.uuid4()}", json={"add_tags": ["x"]})

    assert patched["fields"] == {"lifecycle_stage": "customer", "plan": "pro"}
    assert patched["tags"] == ["webinar", "customer"]
    assert (patched["time_zone"], patched["email"], patched["phone"]) == (
        "America/New_York", None, "+48601234567",
    )  # fmt: skip
    assert patched["consent"] == {"email": "granted", "sms": "granted"}
    assert removed_tag["tags"] == ["customer"]
    assert "tags both added and removed: x" in problems(both)["body"]
    assert list(problems(bad_zone)) == ["body.time_zone"]
    assert unknown.status_code == 404
    assert ok(await api.get(url))["tags"] == ["customer"]


async def _enrolled_at_wait(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, task_queue: str
) -> tuple[dict[str, Any], Enrollment, Any]:
    await publish_journey(sessions, example(HUBSPOT))
    contact = ok(await api.put("/v1/contacts/lead-1", json={"email": "lead@example.com"}), 201)
    enrollment, handle = await start(
        sessions, client, task_queue, HUBSPOT, uuid.UUID(contact["id"])
    )
    await reach_step(handle, "wait_2d")
    return contact, enrollment, handle


@pytest.mark.usefixtures("worker")
async def test_patch_tells_enrollments_so_a_goal_met_during_a_wait_ends_them(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    contact, enrollment, handle = await _enrolled_at_wait(api, sessions, client, task_queue)

    ok(
        await api.patch(
            f"/v1/contacts/{contact['id']}", json={"fields": {"lifecycle_stage": "customer"}}
        )
    )
    result = await finish(env, handle)

    assert (result.status, result.reason) == ("exited", "goal_met")
    assert await sent_templates(sessions, enrollment.contact_id) == ["nurture-intro"]
    [summary] = ok(await api.get(f"/v1/contacts/{contact['id']}"))["enrollments"]
    assert summary == {
        "id": str(enrollment.id),
        "journey_key": HUBSPOT,
        "version": 1,
        "status": "exited",
        "current_step": "wait_2d",
        "exit_reason": "goal_met",
        "enrolled_at": summary["enrolled_at"],
    }


@pytest.mark.usefixtures("worker")
async def test_an_upsert_that_changes_a_contact_tells_its_enrollments_too(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    _, enrollment, handle = await _enrolled_at_wait(api, sessions, client, task_queue)

    ok(await api.put("/v1/contacts/lead-1", json={"fields": {"lifecycle_stage": "customer"}}))
    result = await finish(env, handle)

    assert (result.status, result.reason) == ("exited", "goal_met")
    assert await sent_templates(sessions, enrollment.contact_id) == ["nurture-intro"]


@pytest.mark.usefixtures("worker")
async def test_delete_unenrolls_then_deletes_the_contact_and_its_history(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    contact, enrollment, handle = await _enrolled_at_wait(api, sessions, client, task_queue)

    deleted = await api.delete(f"/v1/contacts/{contact['id']}")
    result = await finish(env, handle)
    again = await api.delete(f"/v1/contacts/{contact['id']}")

    assert deleted.status_code == 204, deleted.text
    assert deleted.content == b""
    assert (result.status, result.reason) == ("exited", "contact_deleted")
    assert [p.step for p in result.path] == ["intro", "wait_2d"]
    assert (await api.get(f"/v1/contacts/{contact['id']}")).status_code == 404
    assert again.status_code == 404
    async with sessions() as session:
        assert await session.get(Enrollment, enrollment.id) is None
        messages = list(await session.scalars(select(Message)))
        assert [(m.template, m.contact_id, m.enrollment_id) for m in messages] == [
            ("nurture-intro", None, None)
        ]
        assert (
            await session.scalar(
                select(func.count())
                .select_from(Contact)
                .where(col(Contact.external_id) == "lead-1")
            )
            == 0
        )
