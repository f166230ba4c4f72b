"""Who enters and who is kept out: exclusion segments at entry and before every send, and
journeys triggered by entering a segment, through the API on the real worker and Postgres."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlmodel import col
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.contracts import EnrollmentResult
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, Enrollment, Message
from tests.support import (
    finish,
    make_contact,
    make_templates,
    ok,
    problems,
    publish_journey,
    reach_step,
)

pytestmark = pytest.mark.usefixtures("worker")

CUSTOMERS = {
    "name": "Customers",
    "filter": {"type": "field", "field": "fields.lifecycle", "op": "eq", "value": "customer"},
}


def _two_emails(key: str, **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "name": key,
        "start": "first",
        "steps": {
            "first": {"type": "send_email", "template": "first", "next": "wait"},
            "wait": {"type": "wait", "duration": "1d", "next": "second"},
            "second": {"type": "send_email", "template": "second"},
        },
        **extra,
    }


async def _enroll(api: httpx.AsyncClient, journey: str, contact_id: uuid.UUID) -> httpx.Response:
    return await api.post(
        "/v1/enrollments", json={"journey_key": journey, "contact_id": str(contact_id)}
    )


async def test_a_contact_in_the_exclusion_segment_never_enters(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/segments/customers", json=CUSTOMERS), 201)
    await publish_journey(sessions, _two_emails("promo", entry={"exclusion_segment": "customers"}))
    customer = await make_contact(sessions, fields={"lifecycle": "customer"})
    lead = await make_contact(sessions, fields={"lifecycle": "lead"})

    refused = await _enroll(api, "promo", customer)
    admitted = await _enroll(api, "promo", lead)

    assert refused.status_code == 409
    assert "exclusion segment 'customers'" in refused.json()["detail"]
    assert admitted.status_code == 201, admitted.text


async def test_a_journey_cannot_go_live_with_segments_that_do_not_exist(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    definition = _two_emails(
        "promo",
        trigger={"type": "segment_entered", "segment": "nobody"},
        entry={"exclusion_segment": "ghosts"},
    )
    await make_templates(sessions, definition)
    ok(await api.post("/v1/journeys", json=definition), 201)

    refused = await api.post("/v1/journeys/promo/publish")

    assert problems(refused) == {
        "trigger.segment": "no segment 'nobody'",
        "entry.exclusion_segment": "no segment 'ghosts'",
    }


async def test_a_segment_a_journey_needs_cannot_be_deleted_and_if_gone_keeps_everyone_out(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await publish_journey(sessions, _two_emails("promo", entry={"exclusion_segment": "gone"}))
    await publish_journey(
        sessions, _two_emails("old", trigger={"type": "segment_entered", "segment": "gone"})
    )
    ok(await api.post("/v1/journeys/old/archive"))

    refused_delete = await api.delete("/v1/segments/gone")
    async with sessions.begin() as session:  # deleted anyway, by hand in the database
        await session.execute(text("DELETE FROM segments WHERE key = 'gone'"))
    contact_id = await make_contact(sessions)
    refused = await _enroll(api, "promo", contact_id)

    assert refused_delete.status_code == 409
    assert "used by journey(s) promo " in refused_delete.json()["detail"]  # not the archived one
    assert refused.status_code == 409
    assert "'gone' does not exist" in refused.json()["detail"]


async def test_joining_the_exclusion_segment_stops_later_sends(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, env: WorkflowEnvironment
) -> None:
    ok(await api.put("/v1/segments/customers", json=CUSTOMERS), 201)
    await publish_journey(sessions, _two_emails("promo", entry={"exclusion_segment": "customers"}))
    contact_id = await make_contact(sessions, fields={"lifecycle": "lead"})
    created = ok(await _enroll(api, "promo", contact_id), 201)
    handle = client.get_workflow_handle(created["workflow_id"], result_type=EnrollmentResult)
    await reach_step(handle, "wait")

    async with sessions.begin() as session:  # bought meanwhile (a CRM write, no API call)
        await session.execute(
            update(Contact)
            .where(col(Contact.id) == contact_id)
            .values(fields={"lifecycle": "customer"})
        )
    await finish(env, handle)

    async with sessions() as session:
        messages = {m.step_id: (m.status, m.reason) for m in await session.scalars(select(Message))}
    assert messages == {
        "first": ("sent", None),
        "second": ("skipped", "in exclusion segment customers"),
    }


async def test_entering_a_segment_starts_its_journey_once(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(
        await api.put(
            "/v1/segments/vips",
            json={"name": "VIPs", "filter": {"type": "tag", "tag": "vip", "op": "has"}},
        ),
        201,
    )
    await publish_journey(
        sessions, _two_emails("vip-welcome", trigger={"type": "segment_entered", "segment": "vips"})
    )

    ok(await api.put("/v1/contacts/plain", json={"email": "plain@example.com"}), 201)
    ok(await api.put("/v1/contacts/star", json={"email": "star@example.com"}), 201)
    before = await _enrolled(sessions)
    ok(await api.put("/v1/contacts/star", json={"tags": ["vip"]}))  # enters the segment
    ok(await api.put("/v1/contacts/star", json={"fields": {"seen": 1}}))  # still in it

    assert before == []
    assert await _enrolled(sessions) == ["star"]


async def _enrolled(sessions: SessionFactory) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(col(Contact.external_id)).join(
                Enrollment, col(Enrollment.contact_id) == col(Contact.id)
            )
        )
        return sorted(str(external_id) for external_id in rows)
