"""A workflow that refuses a signal for a reason of its own (Temporal's per-run signal limit)
must not block anything else: erasing its contact still succeeds, and other contacts' stored
clicks are still redelivered."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlmodel import col
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from nurture.audience import events as events_module
from nurture.audience.events import redeliver_engagement
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, Event, Message
from nurture.journeys import enrollments as enrollments_module
from tests.support import enroll_awaiting_click, make_contact, ok, reach_step

pytestmark = pytest.mark.usefixtures("worker")

LIMIT = RPCError(
    "exceeded workflow execution limit for signal events",
    RPCStatusCode.RESOURCE_EXHAUSTED,
    b"",
)


async def test_erasure_terminates_a_workflow_that_refuses_the_unenroll(
    sessions: SessionFactory,
    client: Client,
    api: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waiting = await enroll_awaiting_click(api, sessions, client)

    async def refuses(*args: Any, **kwargs: Any) -> bool:
        raise LIMIT

    monkeypatch.setattr(enrollments_module, "signal_workflow", refuses)
    response = await api.delete(f"/v1/contacts/{waiting.contact_id}")

    assert response.status_code == 204, response.text
    described = await waiting.handle.describe()
    assert described.status == WorkflowExecutionStatus.TERMINATED
    async with sessions() as session:
        assert await session.get(Contact, waiting.contact_id) is None


async def test_one_refusing_workflow_does_not_hold_back_other_clicks(
    sessions: SessionFactory,
    client: Client,
    api: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = await enroll_awaiting_click(api, sessions, client)
    other = await make_contact(sessions)
    enrolled = ok(
        await api.post(
            "/v1/enrollments",
            json={"journey_key": "benchmark-welcome", "contact_id": str(other)},
        ),
        201,
    )
    await reach_step(client.get_workflow_handle(enrolled["workflow_id"]), "wait_1d")
    async with sessions() as session:
        other_message = await session.scalar(
            select(col(Message.id)).where(col(Message.contact_id) == other)
        )
    # Two clicks kept while Temporal was away: the refused one is the older.
    for message_id in (first.message_id, other_message):
        ok(
            await api.post(
                f"/v1/messages/{message_id}/engagements",
                json={"kind": "click", "link": "purchase", "idempotency_key": str(uuid.uuid4())},
            ),
            202,
        )
    async with sessions.begin() as session:
        await session.execute(update(Event).values(signalled_at=None))

    real = enrollments_module.signal_workflow

    async def first_refuses(client: Client, workflow_id: str, *args: Any) -> bool:
        if workflow_id == first.handle.id:
            raise LIMIT
        return await real(client, workflow_id, *args)

    monkeypatch.setattr(events_module, "signal_workflow", first_refuses)
    delivered = await redeliver_engagement(sessions, client)

    assert delivered == 1
    async with sessions() as session:
        due = list(
            await session.scalars(
                select(col(Event.message_id)).where(col(Event.signalled_at).is_(None))
            )
        )
    assert due == [first.message_id]
