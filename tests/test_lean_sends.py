"""The send activity's lean path gives way to the locking one when the world moved between its
read and its insert (activities/messaging.py, `_claim_lean`): the message is rendered between
the two statements, and these tests change things right then, as a concurrent attempt or an
erasure would."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlmodel import col
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.messaging import MessagingActivities
from nurture.channels.base import OutgoingMessage
from nurture.content.rendering import TemplateContent
from nurture.contracts import SendRequest
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, Message, OutboxMessage, Template
from nurture.db.rows import ContactLike
from nurture.journeys.enrollments import EnrollmentOptions, enroll
from nurture.settings import Settings
from tests.support import make_contact, publish_journey
from worker import default_channels

WAITING: dict[str, Any] = {
    "key": "lean-wait",
    "name": "Lean sends",
    "start": "ping",
    "steps": {
        "ping": {
            "type": "wait_for",
            "event": {"type": "custom", "name": "lean-ping"},
            "timeout": "30d",
        }
    },
}


class Interrupted(MessagingActivities):
    """Runs `meanwhile` while the lean path renders, before it inserts the message row."""

    meanwhile: Callable[[], Awaitable[None]] | None = None

    async def _compose(
        self,
        content: TemplateContent,
        request: SendRequest,
        message_id: uuid.UUID,
        contact: ContactLike,
    ) -> tuple[OutgoingMessage, int]:
        if self.meanwhile is not None:
            act, self.meanwhile = self.meanwhile, None
            await act()
        return await super()._compose(content, request, message_id, contact)


async def _enrolled(
    sessions: SessionFactory, client: Client, task_queue: str, name: str
) -> SendRequest:
    await publish_journey(sessions, WAITING)
    async with sessions.begin() as session:
        if await session.scalar(select(Template).where(col(Template.key) == "lean-hi")) is None:
            session.add(Template(key="lean-hi", channel="email", subject="Hi", text="Hello"))
    contact = await make_contact(sessions, email=f"{name}@example.com")
    enrollment = await enroll(sessions, client, EnrollmentOptions(task_queue), "lean-wait", contact)
    return SendRequest(
        idempotency_key=f"{enrollment.id}:hello:1",
        enrollment_id=enrollment.id,
        contact_id=contact,
        journey_key="lean-wait",
        step="hello",
        channel="email",
        template="lean-hi",
        visit=1,
        at=datetime.now(UTC),
    )


async def _outbox(sessions: SessionFactory, key: str) -> int:
    async with sessions() as session:
        rows = await session.scalars(
            select(OutboxMessage).where(col(OutboxMessage.idempotency_key) == key)
        )
        return len(rows.all())


@pytest.mark.usefixtures("worker")
async def test_a_row_made_by_another_attempt_meanwhile_is_not_sent_again(
    sessions: SessionFactory, client: Client, task_queue: str
) -> None:
    request = await _enrolled(sessions, client, task_queue, "lean-race")
    messaging = Interrupted(sessions, default_channels(sessions), Settings())
    other = uuid.uuid4()

    async def another_attempt_sends() -> None:
        async with sessions.begin() as session:
            session.add(Message(id=other, idempotency_key=request.idempotency_key,
                                enrollment_id=request.enrollment_id, contact_id=request.contact_id,
                                step_id="hello", channel="email", template="lean-hi",
                                status="sent"))  # fmt: skip

    messaging.meanwhile = another_attempt_sends
    result = await ActivityEnvironment().run(messaging.send_message, request)

    assert (result.status, result.message_id) == ("sent", other)
    assert await _outbox(sessions, request.idempotency_key) == 0  # this attempt sent nothing


@pytest.mark.usefixtures("worker")
async def test_a_contact_erased_while_its_message_renders_gets_nothing(
    sessions: SessionFactory, client: Client, task_queue: str
) -> None:
    request = await _enrolled(sessions, client, task_queue, "lean-erased")
    messaging = Interrupted(sessions, default_channels(sessions), Settings())

    async def erased() -> None:  # its enrollments, steps and claims go with it
        async with sessions.begin() as session:
            await session.execute(delete(Contact).where(col(Contact.id) == request.contact_id))

    messaging.meanwhile = erased
    result = await ActivityEnvironment().run(messaging.send_message, request)

    assert (result.status, result.reason) == ("skipped", "contact_deleted")
    assert await _outbox(sessions, request.idempotency_key) == 0
    async with sessions() as session:
        message = await session.scalar(
            select(Message).where(col(Message.idempotency_key) == request.idempotency_key)
        )
    assert message is not None and message.contact_id is None and message.status == "skipped"
