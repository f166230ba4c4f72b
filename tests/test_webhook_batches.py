"""A provider batch at SendGrid's maximum (1,000 events): stored in one batch, answered, then
signalled; delivered again, deduplicated (issue 11, item 3). Its speed is measured by
`python -m bench.webhooks`, not here."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import event, func
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from nurture.db.engine import SessionFactory
from nurture.db.models import Enrollment, Event, Message, WebhookEvent
from nurture.settings import Settings
from tests.support import enroll_awaiting_click, make_contact, ok, reach_step
from tests.test_webhooks import (  # noqa: F401  (fixtures)
    Sns,
    _client_for,
    hook_settings,
    make_message,
    sendgrid_key,
    sendgrid_post,
    sg_event,
    sns,
)

pytestmark = pytest.mark.usefixtures("worker")

BATCH = 1_000


@pytest.fixture
async def hooks(
    hook_settings: Settings,  # noqa: F811
    sessions: SessionFactory,
    client: Client,
    sns: Sns,  # noqa: F811
) -> AsyncIterator[httpx.AsyncClient]:
    """The webhook app with the production body limit (1 MB; a full batch is ~400 KB), not the
    tests' 64 KB."""
    settings = hook_settings.model_copy(update={"max_body_bytes": Settings().max_body_bytes})
    async for http in _client_for(settings, sessions, client, sns):
        yield http


async def signals_of(client: Client, workflow_id: str) -> int:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return sum(
        1
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    )


async def another_awaiting_click(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client
) -> str:
    """One more benchmark-welcome enrollment waiting in wait_1d; its workflow id."""
    contact_id = await make_contact(sessions)
    created = ok(
        await api.post(
            "/v1/enrollments",
            json={"journey_key": "benchmark-welcome", "contact_id": str(contact_id)},
        ),
        201,
    )
    await reach_step(client.get_workflow_handle(created["workflow_id"]), "wait_1d")
    return str(created["workflow_id"])


async def message_of(sessions: SessionFactory, workflow_id: str) -> uuid.UUID:
    async with sessions() as session:
        message_id = await session.scalar(
            select(col(Message.id))
            .join(Enrollment, col(Enrollment.id) == col(Message.enrollment_id))
            .where(col(Enrollment.workflow_id) == workflow_id)
        )
    assert message_id is not None
    return message_id


async def test_a_full_sendgrid_batch_is_stored_once_signalled_and_deduplicated(
    hooks: httpx.AsyncClient,
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    engine: AsyncEngine,
    client: Client,
    sendgrid_key: ec.EllipticCurvePrivateKey,  # noqa: F811
) -> None:
    one = await enroll_awaiting_click(api, sessions, client)  # publishes the journey
    waiting = [one.handle.id] + [
        await another_awaiting_click(api, sessions, client) for _ in range(2)
    ]
    messages = [one.message_id] + [await message_of(sessions, w) for w in waiting[1:]]
    other = await make_message(sessions, "sendgrid", "sg-batch-other")
    clicks = [
        sg_event(
            "click",
            "unknown-to-us",
            url="https://example.com/x",
            nurture_message_id=str(m),
        )
        for m in messages
    ]
    opens = [sg_event("open", "sg-batch-other") for _ in range(BATCH - len(clicks))]
    batch = clicks + opens

    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        first = await hooks.post("/v1/webhooks/sendgrid", **sendgrid_post(sendgrid_key, batch))
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)

    assert first.status_code == 200, first.text
    assert first.json() == {"received": BATCH, "duplicates": 0, "unmatched": 0}
    # One INSERT for the whole batch of webhook events, one for the opens and clicks.
    assert sum(1 for s in statements if s.startswith("INSERT INTO webhook_events")) == 1
    assert sum(1 for s in statements if s.startswith("INSERT INTO events")) == 1
    async with sessions() as session:
        stored = await session.scalar(select(func.count()).select_from(WebhookEvent))
        unprocessed = await session.scalar(
            select(func.count())
            .select_from(WebhookEvent)
            .where(col(WebhookEvent.processed_at).is_(None))
        )
        engagements = await session.scalar(select(func.count()).select_from(Event))
        undelivered = await session.scalar(
            select(func.count()).select_from(Event).where(col(Event.signalled_at).is_(None))
        )
        opens_of_other = await session.scalar(
            select(func.count()).select_from(Event).where(col(Event.message_id) == other.id)
        )
    assert (stored, unprocessed) == (BATCH, 0)
    assert (engagements, opens_of_other) == (BATCH, BATCH - len(clicks))
    # Signalled after the answer (the in-process test client waits for that too).
    assert undelivered == 0
    for w in waiting:
        assert await signals_of(client, w) == 1

    again = await hooks.post("/v1/webhooks/sendgrid", **sendgrid_post(sendgrid_key, batch))

    assert again.status_code == 200, again.text
    assert again.json() == {"received": BATCH, "duplicates": BATCH, "unmatched": 0}
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(WebhookEvent)) == BATCH
        assert await session.scalar(select(func.count()).select_from(Event)) == BATCH
    for w in waiting:
        assert await signals_of(client, w) == 1  # nothing signalled twice


async def test_a_batch_answered_before_temporal_is_told_is_redelivered(
    sessions: SessionFactory,
    api: httpx.AsyncClient,
    client: Client,
) -> None:
    """The stored rows are the durable record: a batch stored but never signalled (the process
    died after answering) is delivered by the worker's redelivery."""
    from nurture.audience.events import redeliver_engagement
    from nurture.webhooks.base import ProviderEvent, dedupe_key
    from nurture.webhooks.ingest import store

    waiting = await enroll_awaiting_click(api, sessions, client)
    stored = await store(
        sessions,
        [
            ProviderEvent(
                provider="sendgrid",
                dedupe_key=dedupe_key("sendgrid", "crash-1"),
                kind="clicked",
                provider_message_id=None,
                message_id=waiting.message_id,
                url="https://example.com/x",
                raw={},
            )
        ],
    )
    assert stored.result.engagements == 1
    assert await signals_of(client, waiting.handle.id) == 0  # never delivered: "crashed"

    assert await redeliver_engagement(sessions, client) == 1
    assert await signals_of(client, waiting.handle.id) == 1
    assert await redeliver_engagement(sessions, client) == 0
