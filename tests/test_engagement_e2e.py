"""The engagement loop end to end with real peers: the worker sends through SMTP to an aiosmtpd
server, the API serves tracked links over real HTTP on loopback, SendGrid's signed webhook is
verified, and one-click unsubscribe stops later sends."""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr
from sqlalchemy import select
from sqlmodel import col
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.resources import Resources
from nurture.apikeys import create_api_key
from nurture.channels.base import ChannelSender, DeliveryReceipt, OutgoingMessage
from nurture.channels.outbox import OutboxChannel
from nurture.channels.smtp import SmtpChannel
from nurture.contracts import EnrollmentResult
from nurture.db.engine import SessionFactory
from nurture.db.models import Event, Message, Suppression, WebhookEvent
from nurture.settings import Settings
from nurture.webhooks.base import ProviderEvent
from nurture.webhooks.ingest import ingest
from tests.support import (
    example,
    finish,
    make_contact,
    make_lists,
    ok,
    publish_journey,
    reach_step,
    start,
)
from tests.test_channels import Mailbox, start_smtp
from tests.test_webhooks import _der_b64, sendgrid_post
from worker import build_worker

WELCOME_HTML = """<html><body>
<p>Hi {{ fields.first_name | default("there") }},</p>
<p><a href="https://shop.test/buy?plan=pro" data-link="purchase">Buy the pro plan</a></p>
<p><a href="https://shop.test/blog">Read the blog</a></p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>"""


@dataclass
class Stack:
    http: httpx.AsyncClient  # the API over real HTTP, authenticated
    base_url: str
    mailbox: Mailbox
    sendgrid_key: ec.EllipticCurvePrivateKey


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    for peer in start_smtp():
        yield peer.mailbox, peer.port


@pytest.fixture
async def stack(
    sessions: SessionFactory,
    client: Client,
    settings: Settings,
    task_queue: str,
    smtp: tuple[Mailbox, int],
) -> AsyncIterator[Stack]:
    mailbox, smtp_port = smtp
    sendgrid_key = ec.generate_private_key(ec.SECP256R1())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    configured = settings.model_copy(
        update={
            "public_base_url": base_url,
            "secret_key": SecretStr("e2e-secret"),
            "email_channel": "smtp",
            "email_from": "Shop <hello@shop.test>",
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_port,
            "smtp_security": "none",
            "sendgrid_webhook_public_key": _der_b64(sendgrid_key),
        }
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(Resources(configured, sessions, client)),
            lifespan="off",
            log_level="warning",
        )
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)
    channels: dict[str, ChannelSender] = {
        "email": SmtpChannel(configured),
        "sms": OutboxChannel(sessions),
    }
    key = await create_api_key(sessions, "e2e")
    try:
        async with (
            build_worker(client, sessions, task_queue, channels=channels, settings=configured),
            httpx.AsyncClient(
                base_url=base_url, headers={"Authorization": f"Bearer {key.secret}"}
            ) as http,
        ):
            yield Stack(http, base_url, mailbox, sendgrid_key)
            from tests.conftest import _terminate_started

            await _terminate_started()  # while the worker still runs (see conftest)
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def _publish(stack: Stack) -> None:
    http = stack.http
    ok(
        await http.put(
            "/v1/templates/email/welcome",
            json={"subject": "Welcome, {{ fields.first_name }}", "html": WELCOME_HTML},
        )
    )
    ok(
        await http.put(
            "/v1/templates/email/welcome-follow-up",
            json={"subject": "Still thinking?", "text": "Come back: {{ unsubscribe_url }}"},
        )
    )
    definition = example("benchmark-welcome")
    ok(await http.post("/v1/journeys", json=definition), 201)
    ok(await http.post(f"/v1/journeys/{definition['key']}/publish"), 201)


async def _enroll(stack: Stack, client: Client, first_name: str) -> WorkflowHandle[Any, Any]:
    external_id = f"{first_name.lower()}-{uuid.uuid4().hex[:6]}"
    ok(
        await stack.http.put(
            f"/v1/contacts/{external_id}",
            json={"email": f"{external_id}@example.com", "fields": {"first_name": first_name}},
        ),
        201,
    )
    created = ok(
        await stack.http.post(
            "/v1/enrollments",
            json={"journey_key": "benchmark-welcome", "external_id": external_id},
        ),
        201,
    )
    handle = client.get_workflow_handle(created["workflow_id"], result_type=EnrollmentResult)
    await reach_step(handle, "wait_1d")
    return handle


async def _delivered(sessions: SessionFactory, kind: str, within: float = 10) -> None:
    """Wait until the open or click stored by the tracking route has been signalled."""
    async with asyncio.timeout(within):
        while True:
            async with sessions() as session:
                signalled = await session.scalar(
                    select(col(Event.signalled_at)).where(col(Event.kind) == kind).limit(1)
                )
            if signalled is not None:
                return
            await asyncio.sleep(0.05)


def _email_to(mailbox: Mailbox, first_name: str) -> EmailMessage:
    for index, envelope in enumerate(mailbox.envelopes):
        if any(rcpt.startswith(first_name.lower()) for rcpt in envelope.rcpt_tos):
            return mailbox.parsed(index)
    raise AssertionError(f"no email to {first_name}: {[e.rcpt_tos for e in mailbox.envelopes]}")


def _links(message: EmailMessage) -> list[str]:
    html = message.get_body(("html",))
    assert html is not None
    return re.findall(r'href="([^"]+)"', html.get_content())


async def test_click_in_a_real_email_takes_the_clicked_branch(
    stack: Stack, sessions: SessionFactory, client: Client, env: WorkflowEnvironment
) -> None:
    await make_lists(sessions, "paid-customers")
    await _publish(stack)
    handle = await _enroll(stack, client, "Ada")

    received = _email_to(stack.mailbox, "Ada")
    assert received["Subject"] == "Welcome, Ada"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    buy, blog, unsubscribe = _links(received)
    assert buy.startswith(f"{stack.base_url}/v1/t/c/") and "ada" not in buy.lower()
    assert blog.startswith(f"{stack.base_url}/v1/t/c/") and blog != buy
    assert unsubscribe.startswith(f"{stack.base_url}/v1/u/")
    assert f"{stack.base_url}/v1/t/o/" in received.get_body(("html",)).get_content()  # type: ignore[union-attr]

    async with httpx.AsyncClient() as browser:  # a person's browser: no API key
        followed = await browser.get(buy, headers={"User-Agent": "Mozilla/5.0 (X11) Firefox/140"})
    assert followed.status_code == 302
    assert followed.headers["location"] == "https://shop.test/buy?plan=pro"
    # The redirect is answered first; the enrollment is told right after (in the background).
    await _delivered(sessions, "click")

    result = await finish(env, handle)
    assert [p.step for p in result.path][-2:] == ["mark_paid", "to_customers"]
    async with sessions() as session:
        click = (await session.scalars(select(Event).where(col(Event.kind) == "click"))).one()
    assert (click.link, click.signalled_at is not None) == ("purchase", True)


async def test_signed_sendgrid_open_is_accepted_and_a_forged_one_refused(
    stack: Stack, sessions: SessionFactory, client: Client
) -> None:
    await make_lists(sessions, "paid-customers")
    await _publish(stack)
    await _enroll(stack, client, "Grace")
    async with sessions() as session:
        message = (await session.scalars(select(Message))).one()
    events = [
        {
            "email": "grace@example.com",
            "timestamp": 1_790_000_000,
            "event": "open",
            "sg_event_id": f"evt-{uuid.uuid4()}",
            "sg_message_id": "sgid.filter0001",
            "nurture_message_id": str(message.id),
        }
    ]
    forger = ec.generate_private_key(ec.SECP256R1())

    forged = await stack.http.post("/v1/webhooks/sendgrid", **sendgrid_post(forger, events))
    accepted = await stack.http.post(
        "/v1/webhooks/sendgrid", **sendgrid_post(stack.sendgrid_key, events)
    )

    assert forged.status_code == 401
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["received"] == 1
    async with sessions() as session:
        stored = (await session.scalars(select(WebhookEvent))).all()
        opens = (await session.scalars(select(Event).where(col(Event.kind) == "open"))).all()
    assert [(w.kind, w.message_id) for w in stored] == [("opened", message.id)]
    assert [o.message_id for o in opens] == [message.id]


async def test_one_click_unsubscribe_skips_the_later_send(
    stack: Stack, sessions: SessionFactory, client: Client, env: WorkflowEnvironment
) -> None:
    await make_lists(sessions, "paid-customers")
    await _publish(stack)
    handle = await _enroll(stack, client, "Linus")
    received = _email_to(stack.mailbox, "Linus")
    one_click_url = received["List-Unsubscribe"].strip("<>")

    async with httpx.AsyncClient() as mail_client:  # what Gmail does for its button
        response = await mail_client.post(
            one_click_url,
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code == 200
    result = await finish(env, handle)

    assert [p.step for p in result.path][-1] == "follow_up"  # no click: the follow-up branch
    async with sessions() as session:
        follow_up = (
            await session.scalars(select(Message).where(col(Message.step_id) == "follow_up"))
        ).one()
        suppression = (await session.scalars(select(Suppression))).one()
    assert (follow_up.status, follow_up.reason) == ("skipped", "email_unsubscribed")
    assert (suppression.reason, suppression.source) == ("unsubscribed", "one_click")
    assert len(stack.mailbox.envelopes) == 1  # the welcome only; the follow-up never left


class _FastReportingProvider:
    """A provider whose bounce report reaches our webhook before its API call returns (it
    happens: webhooks race the response). Stands in for the outside provider only."""

    provider = "sendgrid"

    def __init__(self, sessions: SessionFactory, client: Client) -> None:
        self._sessions, self._client = sessions, client

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        provider_id = f"sg-{message.message_id.hex}"
        bounce = ProviderEvent(
            provider="sendgrid",
            dedupe_key=f"sendgrid:bounce:{provider_id}",
            kind="bounced",
            provider_message_id=provider_id,
            permanent=True,
        )
        result = await ingest(self._sessions, self._client, [bounce])
        assert result.unmatched == 1  # we do not know this id yet
        return DeliveryReceipt(provider="sendgrid", provider_message_id=provider_id)


async def test_a_webhook_that_beats_the_send_is_acted_on_once_the_send_is_recorded(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await make_lists(sessions, "paid-customers")
    await publish_journey(sessions, example("benchmark-welcome"))
    contact_id = await make_contact(sessions)
    channels: dict[str, ChannelSender] = {"email": _FastReportingProvider(sessions, client)}
    async with build_worker(client, sessions, task_queue, channels=channels):
        _, handle = await start(sessions, client, task_queue, "benchmark-welcome", contact_id)
        result = await finish(env, handle)

    async with sessions() as session:
        suppression = (await session.scalars(select(Suppression))).one()
        follow_up = (
            await session.scalars(select(Message).where(col(Message.step_id) == "follow_up"))
        ).one()
        webhook = (await session.scalars(select(WebhookEvent))).one()
    assert (suppression.contact_id, suppression.reason) == (contact_id, "bounced")
    assert webhook.message_id is not None and webhook.processed_at is not None
    assert result.path[-1].step == "follow_up"
    assert (follow_up.status, follow_up.reason) == ("skipped", "email_bounced")
