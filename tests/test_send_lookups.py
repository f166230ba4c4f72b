"""What the channels say about an attempt whose outcome is unknown: whether the provider may
have the message (`maybe_accepted`), and what their lookups answer. Real loopback peers."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nurture.channels.base import LookupUnavailable, OutgoingMessage, TemporarySendError
from nurture.channels.mailgun import MailgunChannel
from nurture.channels.postmark import PostmarkChannel
from nurture.channels.smtp import SmtpChannel
from nurture.channels.twilio import TwilioChannel
from nurture.settings import Settings


def _message(**changes: Any) -> OutgoingMessage:
    values: dict[str, Any] = {
        "idempotency_key": f"enr-{uuid.uuid4()}:hello:1",
        "message_id": uuid.uuid4(),
        "channel": "email",
        "to_address": "ada@example.com",
        "template": "hello",
        "subject": "Hello",
        "text": "Hello Ada",
    }
    return OutgoingMessage(**(values | changes))


def _settings(**values: Any) -> Settings:
    return Settings.model_validate(values | {"provider_timeout_seconds": 0.5})


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Peer:
    """Answers lookups from `found`; `status` makes every answer that status; `slow` makes the
    send endpoints never answer in time."""

    def __init__(self) -> None:
        self.found: list[dict[str, Any]] = []
        self.status = 200
        self.url = ""

    async def answer(self, request: Request) -> Response:
        if self.status != 200:
            return JSONResponse({"Message": "no"}, self.status)
        if request.method == "POST":  # a send that hangs: the request went out, no answer
            await asyncio.sleep(5)
        path = request.url.path
        if path == "/messages/outbound":
            wanted = request.query_params["metadata_nurture_message_id"]
            hits = [f for f in self.found if f.get("ours") == wanted]
            return JSONResponse({"TotalCount": len(hits), "Messages": hits})
        if path.endswith("/events"):
            return JSONResponse({"items": self.found, "paging": {}})
        return JSONResponse({"messages": self.found})


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    peer = Peer()
    app = Starlette(routes=[Route("/{path:path}", peer.answer, methods=["GET", "POST"])])
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    peer.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # surfaces why it could not start
        await asyncio.sleep(0.01)
    yield peer
    server.should_exit = True
    await task
    sock.close()


async def test_postmark_lookup_by_our_metadata(peer: Peer) -> None:
    channel = PostmarkChannel(
        _settings(postmark_server_token=SecretStr("t"), postmark_base_url=peer.url)
    )
    sent = _message()
    since = datetime.now(UTC)
    assert await channel.find_sent(sent, since) is None
    peer.found = [{"MessageID": "pm-1", "ours": str(sent.message_id)}]
    receipt = await channel.find_sent(sent, since)
    assert receipt is not None and receipt.provider_message_id == "pm-1"
    peer.status = 403  # the key may not read messages: the lookup cannot tell
    with pytest.raises(LookupUnavailable):
        await channel.find_sent(sent, since)
    peer.status = 503  # for now: the send is retried later
    with pytest.raises(TemporarySendError):
        await channel.find_sent(sent, since)
    await channel.aclose()


async def test_mailgun_lookup_reads_user_variables(peer: Peer) -> None:
    channel = MailgunChannel(
        _settings(
            mailgun_api_key=SecretStr("k"), mailgun_domain="mg.test", mailgun_base_url=peer.url
        )
    )
    sent = _message()
    other = {"user-variables": {"nurture_message_id": str(uuid.uuid4())}, "message": {}}
    peer.found = [other]
    assert await channel.find_sent(sent, datetime.now(UTC)) is None
    peer.found = [
        other,
        {
            "user-variables": {"nurture_message_id": str(sent.message_id)},
            "message": {"headers": {"message-id": "mg-1@mg.test"}},
        },
    ]
    receipt = await channel.find_sent(sent, datetime.now(UTC))
    assert receipt is not None and receipt.provider_message_id == "mg-1@mg.test"
    await channel.aclose()


async def test_twilio_lookup_matches_body_and_time(peer: Peer) -> None:
    channel = TwilioChannel(
        _settings(
            twilio_account_sid="ACx",
            twilio_auth_token=SecretStr("t"),
            twilio_from_number="+15005550006",
            twilio_base_url=peer.url,
        )
    )
    sent = _message(channel="sms", to_address="+15005550001", subject=None, text="Hi there")
    since = datetime.now(UTC)
    long_ago = format_datetime(datetime(2020, 1, 1, tzinfo=UTC))
    peer.found = [
        {"sid": "SM-old", "body": "Hi there", "date_created": long_ago},  # an earlier send
        {"sid": "SM-other", "body": "Something else", "date_created": format_datetime(since)},
    ]
    assert await channel.find_sent(sent, since) is None
    peer.found.append({"sid": "SM-1", "body": "Hi there", "date_created": format_datetime(since)})
    receipt = await channel.find_sent(sent, since)
    assert receipt is not None and receipt.provider_message_id == "SM-1"
    await channel.aclose()


async def test_http_send_says_whether_the_provider_may_have_it(peer: Peer) -> None:
    channel = PostmarkChannel(
        _settings(postmark_server_token=SecretStr("t"), postmark_base_url=peer.url)
    )
    with pytest.raises(TemporarySendError) as timed_out:  # sent, no answer in time
        await channel.send(_message())
    assert timed_out.value.maybe_accepted
    peer.status = 500  # the provider answered no
    with pytest.raises(TemporarySendError) as refused:
        await channel.send(_message())
    assert not refused.value.maybe_accepted
    await channel.aclose()
    closed = PostmarkChannel(
        _settings(
            postmark_server_token=SecretStr("t"), postmark_base_url=f"http://127.0.0.1:{_port()}"
        )
    )
    with pytest.raises(TemporarySendError) as unreachable:  # never reached
        await closed.send(_message())
    assert not unreachable.value.maybe_accepted
    await closed.aclose()


class _Silent:
    """Takes the message, then never says 250."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(5)
        return "250 OK"


async def test_smtp_says_whether_the_relay_may_have_it() -> None:
    port = _port()
    controller = Controller(_Silent(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        channel = SmtpChannel(
            _settings(smtp_host="127.0.0.1", smtp_port=port, smtp_security="none")
        )
        with pytest.raises(TemporarySendError) as silent:
            await channel.send(_message())
        assert silent.value.maybe_accepted
    finally:
        controller.stop()
    refused = SmtpChannel(_settings(smtp_host="127.0.0.1", smtp_port=_port(), smtp_security="none"))
    with pytest.raises(TemporarySendError) as unreachable:
        await refused.send(_message())
    assert not unreachable.value.maybe_accepted
