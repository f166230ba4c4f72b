"""The delivery channels against real local peers, no mocks: an aiosmtpd SMTP server (plain,
STARTTLS with AUTH, implicit TLS) and an HTTP server on loopback that answers like SendGrid,
Postmark, Mailgun and Twilio do. Neither the database nor Temporal is needed."""

from __future__ import annotations

import asyncio
import base64
import datetime
import email
import ipaddress
import json
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nurture.channels.base import OutgoingMessage, PermanentSendError, TemporarySendError
from nurture.channels.http import HttpChannel
from nurture.channels.mailgun import MailgunChannel
from nurture.channels.outbox import OutboxChannel
from nurture.channels.postmark import PostmarkChannel
from nurture.channels.registry import channels_from_settings, close_channels
from nurture.channels.sendgrid import SendGridChannel
from nurture.channels.smtp import SmtpChannel
from nurture.channels.twilio import TwilioChannel
from nurture.settings import Settings

UNSUBSCRIBE = "<https://nurture.example/u/tok>, <mailto:unsubscribe@nurture.example?subject=tok>"


def message(**changes: Any) -> OutgoingMessage:
    values: dict[str, Any] = {
        "idempotency_key": f"enr-{uuid.uuid4()}:step-1",
        "message_id": uuid.uuid4(),
        "channel": "email",
        "to_address": "ada@example.com",
        "template": "welcome",
        "subject": "Welcome aboard",
        "html": "<p>Hello <b>Ada</b></p>",
        "text": "Hello Ada",
        "headers": {
            "List-Unsubscribe": UNSUBSCRIBE,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }
    values.update(changes)
    return OutgoingMessage(**values)


def sms(**changes: Any) -> OutgoingMessage:
    return message(
        channel="sms", to_address="+15005550006", subject=None, html=None, headers={}, **changes
    )


def settings(**values: Any) -> Settings:
    """Settings from arguments only: no `.env`, and a short timeout for the timeout test."""
    values.setdefault("provider_timeout_seconds", 5)
    values.setdefault("email_from", "Nurture <hello@mail.nurture.example>")
    return Settings(_env_file=None, **values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- SMTP peers ---------------------------------------------------------------------------


class Mailbox:
    """An aiosmtpd handler that keeps what it accepts and refuses some recipients:
    refused@ for good at RCPT (550), busy@ for now at RCPT (451), spamtrap@ at DATA (554)."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("refused@"):
            return "550 5.1.1 No such user here"
        if address.startswith("busy@"):
            return "451 4.3.0 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if any(rcpt.startswith("spamtrap@") for rcpt in envelope.rcpt_tos):
            return "554 5.7.1 Message rejected as spam"
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def parsed(self, index: int = -1) -> EmailMessage:
        content = self.envelopes[index].content
        assert isinstance(content, bytes)
        parsed = email.message_from_bytes(content, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class SmtpPeer:
    mailbox: Mailbox
    port: int


def start_smtp(**options: Any) -> Iterator[SmtpPeer]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield SmtpPeer(mailbox, port)
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[SmtpPeer]:
    yield from start_smtp()


@dataclass
class Certificate:
    cert_file: Path
    key_file: Path
    pem: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.pem)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, trusted only by the contexts made from it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(directory / "cert.pem", directory / "key.pem", pem.decode())


def authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"relay-user", b"relay-secret")
    # handled=False: aiosmtpd then answers a failure itself, with 535.
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def starttls_server(certificate: Certificate) -> Iterator[SmtpPeer]:
    """A relay that insists on STARTTLS before anything, then on AUTH."""
    yield from start_smtp(
        tls_context=certificate.server_context(),
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=True,
    )


@pytest.fixture(scope="module")
def implicit_tls_server(certificate: Certificate) -> Iterator[SmtpPeer]:
    yield from start_smtp(ssl_context=certificate.server_context())


def smtp_channel(port: int, **values: Any) -> SmtpChannel:
    tls_context = values.pop("tls_context", None)
    values.setdefault("smtp_security", "none")
    return SmtpChannel(
        settings(smtp_host="127.0.0.1", smtp_port=port, **values), tls_context=tls_context
    )


# --- SMTP ---------------------------------------------------------------------------------


async def test_smtp_sends_a_multipart_message_with_our_headers(smtp_server: SmtpPeer) -> None:
    channel = smtp_channel(smtp_server.port, email_reply_to="help@nurture.example")
    sent = message()

    receipt = await channel.send(sent)

    envelope = smtp_server.mailbox.envelopes[-1]
    assert envelope.mail_from == "hello@mail.nurture.example"
    assert envelope.rcpt_tos == ["ada@example.com"]
    parsed = smtp_server.mailbox.parsed()
    assert parsed["From"] == "Nurture <hello@mail.nurture.example>"
    assert parsed["To"] == "ada@example.com"
    assert parsed["Reply-To"] == "help@nurture.example"
    assert parsed["Subject"] == "Welcome aboard"
    assert parsed["List-Unsubscribe"] == UNSUBSCRIBE
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Message-ID"] == f"<{sent.message_id}@mail.nurture.example>"
    assert parsed["X-Nurture-Message-Id"] == str(sent.message_id)
    assert parsed.get_content_type() == "multipart/alternative"
    text_part = parsed.get_body(preferencelist=("plain",))
    html_part = parsed.get_body(preferencelist=("html",))
    assert text_part is not None and html_part is not None
    assert text_part.get_content().strip() == "Hello Ada"
    assert html_part.get_content().strip() == "<p>Hello <b>Ada</b></p>"
    assert receipt.provider == "smtp"
    assert receipt.provider_message_id == f"{sent.message_id}@mail.nurture.example"


async def test_smtp_retry_carries_the_same_message_id(smtp_server: SmtpPeer) -> None:
    channel = smtp_channel(smtp_server.port)
    sent = message()

    first = await channel.send(sent)
    second = await channel.send(sent)

    ids = [smtp_server.mailbox.parsed(index)["Message-ID"] for index in (-2, -1)]
    assert ids[0] == ids[1] == f"<{sent.message_id}@mail.nurture.example>"
    assert first == second


async def test_smtp_single_part_messages(smtp_server: SmtpPeer) -> None:
    channel = smtp_channel(smtp_server.port)

    await channel.send(message(html=None))
    text_only = smtp_server.mailbox.parsed()
    await channel.send(message(text=None))
    html_only = smtp_server.mailbox.parsed()

    assert text_only.get_content_type() == "text/plain"
    assert html_only.get_content_type() == "text/html"


async def test_smtp_refusals_are_permanent_and_deferrals_temporary(
    smtp_server: SmtpPeer,
) -> None:
    channel = smtp_channel(smtp_server.port)

    with pytest.raises(PermanentSendError, match="550"):
        await channel.send(message(to_address="refused@example.com"))
    with pytest.raises(PermanentSendError, match="554"):
        await channel.send(message(to_address="spamtrap@example.com"))
    with pytest.raises(TemporarySendError, match="451"):
        await channel.send(message(to_address="busy@example.com"))


async def test_smtp_header_injection_is_refused_for_good(smtp_server: SmtpPeer) -> None:
    channel = smtp_channel(smtp_server.port)
    with pytest.raises(PermanentSendError, match="cannot build"):
        await channel.send(message(subject="Hi\r\nBcc: everyone@example.com"))


async def test_smtp_connection_refused_is_temporary() -> None:
    channel = smtp_channel(free_port())
    with pytest.raises(TemporarySendError):
        await channel.send(message())


async def test_smtp_starttls_with_auth(starttls_server: SmtpPeer, certificate: Certificate) -> None:
    channel = smtp_channel(
        starttls_server.port,
        smtp_security="starttls",
        smtp_username="relay-user",
        smtp_password=SecretStr("relay-secret"),
        tls_context=certificate.client_context(),
    )
    sent = message()

    await channel.send(sent)

    assert starttls_server.mailbox.parsed()["Message-ID"] == (
        f"<{sent.message_id}@mail.nurture.example>"
    )


async def test_smtp_wrong_password_and_untrusted_certificate(
    starttls_server: SmtpPeer, certificate: Certificate
) -> None:
    wrong_password = smtp_channel(
        starttls_server.port,
        smtp_security="starttls",
        smtp_username="relay-user",
        smtp_password=SecretStr("guess"),
        tls_context=certificate.client_context(),
    )
    # Refused credentials are ours to fix: the message waits (retried) rather than failing.
    with pytest.raises(TemporarySendError, match="535"):
        await wrong_password.send(message())

    # The system trust store does not know our certificate: no mail goes out in clear text.
    untrusted = smtp_channel(starttls_server.port, smtp_security="starttls")
    with pytest.raises(TemporarySendError):
        await untrusted.send(message())


async def test_smtp_implicit_tls(implicit_tls_server: SmtpPeer, certificate: Certificate) -> None:
    channel = smtp_channel(
        implicit_tls_server.port, smtp_security="tls", tls_context=certificate.client_context()
    )
    await channel.send(message(subject="Over TLS"))
    assert implicit_tls_server.mailbox.parsed()["Subject"] == "Over TLS"


# --- An HTTP peer that answers like the providers ------------------------------------------


@dataclass
class Recorded:
    path: str
    headers: Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode(), keep_blank_values=True)

    def basic_auth(self) -> tuple[str, str]:
        scheme, _, encoded = self.headers["authorization"].partition(" ")
        assert scheme == "Basic"
        user, _, password = base64.b64decode(encoded).decode().partition(":")
        return user, password


@dataclass
class FakeProvider:
    """Records every request; answers with the queued replies, then 200 {}."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    replies: list[Response] = field(default_factory=list)
    delay: float = 0.0

    def reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.replies.append(JSONResponse(body if body is not None else {}, status, headers))

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    async def endpoint(self, request: Request) -> Response:
        self.requests.append(Recorded(request.url.path, request.headers, await request.body()))
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.replies.pop(0) if self.replies else JSONResponse({})


@pytest.fixture(scope="module")
async def http_server() -> AsyncIterator[FakeProvider]:
    """uvicorn serving the fake in the tests' own event loop, on a port the OS picked."""
    fake = FakeProvider()
    app = Starlette(routes=[Route("/{path:path}", fake.endpoint, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # surfaces why it could not start
        await asyncio.sleep(0.01)
    yield fake
    server.should_exit = True
    await task
    sock.close()


@pytest.fixture
async def provider(http_server: FakeProvider) -> AsyncIterator[FakeProvider]:
    http_server.requests.clear()
    http_server.replies.clear()
    http_server.delay = 0.0
    yield http_server
    http_server.delay = 0.0


@pytest.fixture
async def opened() -> AsyncIterator[list[HttpChannel]]:
    """Channels a test opens, closed afterwards (through close_channels, which is under test)."""
    channels: list[HttpChannel] = []
    yield channels
    await close_channels(channels)


# --- SendGrid -----------------------------------------------------------------------------


@pytest.fixture
def sendgrid(provider: FakeProvider, opened: list[HttpChannel]) -> SendGridChannel:
    channel = SendGridChannel(
        settings(
            sendgrid_api_key=SecretStr("SG.test-key"),
            sendgrid_base_url=provider.url,
            email_reply_to="Help <help@nurture.example>",
        )
    )
    opened.append(channel)
    return channel


async def test_sendgrid_send(sendgrid: SendGridChannel, provider: FakeProvider) -> None:
    provider.reply(202, headers={"X-Message-Id": "sg-abc123"})
    sent = message()

    receipt = await sendgrid.send(sent)

    request = provider.last
    assert request.path == "/v3/mail/send"
    assert request.headers["authorization"] == "Bearer SG.test-key"
    body = request.json()
    personalization = body["personalizations"][0]
    assert personalization["to"] == [{"email": "ada@example.com"}]
    assert personalization["custom_args"] == {
        "nurture_message_id": str(sent.message_id),
        "nurture_idempotency_key": sent.idempotency_key,
    }
    assert body["from"] == {"email": "hello@mail.nurture.example", "name": "Nurture"}
    assert body["reply_to"] == {"email": "help@nurture.example", "name": "Help"}
    assert body["subject"] == "Welcome aboard"
    assert body["content"] == [
        {"type": "text/plain", "value": "Hello Ada"},
        {"type": "text/html", "value": "<p>Hello <b>Ada</b></p>"},
    ]
    assert body["headers"]["List-Unsubscribe"] == UNSUBSCRIBE
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    tracking = body["tracking_settings"]
    assert tracking["click_tracking"]["enable"] is False
    assert tracking["open_tracking"]["enable"] is False
    assert tracking["subscription_tracking"]["enable"] is False
    assert (receipt.provider, receipt.provider_message_id) == ("sendgrid", "sg-abc123")


async def test_sendgrid_errors(sendgrid: SendGridChannel, provider: FakeProvider) -> None:
    provider.reply(
        400,
        {"errors": [{"message": "Does not contain a valid address.", "field": "to.email"}]},
    )
    with pytest.raises(PermanentSendError, match=r"400.*valid address"):
        await sendgrid.send(message(to_address="not-an-address"))

    provider.reply(429, {"errors": [{"message": "too many requests"}]})
    with pytest.raises(TemporarySendError, match="429"):
        await sendgrid.send(message())

    provider.reply(500, {"errors": [{"message": "internal error"}]})
    with pytest.raises(TemporarySendError, match="500"):
        await sendgrid.send(message())

    # A revoked API key is our configuration: messages wait for the fix instead of failing.
    provider.reply(401, {"errors": [{"message": "The provided authorization grant is invalid"}]})
    with pytest.raises(TemporarySendError, match="401"):
        await sendgrid.send(message())


# --- Postmark -----------------------------------------------------------------------------


@pytest.fixture
def postmark(provider: FakeProvider, opened: list[HttpChannel]) -> PostmarkChannel:
    channel = PostmarkChannel(
        settings(
            postmark_server_token=SecretStr("pm-token"),
            postmark_base_url=provider.url,
            postmark_message_stream="broadcast",
        )
    )
    opened.append(channel)
    return channel


async def test_postmark_send(postmark: PostmarkChannel, provider: FakeProvider) -> None:
    provider.reply(
        200,
        {
            "To": "ada@example.com",
            "SubmittedAt": "2024-01-01T00:00:00Z",
            "MessageID": "b7bc2f4a-e38e-4336-af7d-e6c392c2f817",
            "ErrorCode": 0,
            "Message": "OK",
        },
    )
    sent = message()

    receipt = await postmark.send(sent)

    request = provider.last
    assert request.path == "/email"
    assert request.headers["x-postmark-server-token"] == "pm-token"
    body = request.json()
    assert body["From"] == "Nurture <hello@mail.nurture.example>"
    assert body["To"] == "ada@example.com"
    assert body["Subject"] == "Welcome aboard"
    assert body["TextBody"] == "Hello Ada"
    assert body["HtmlBody"] == "<p>Hello <b>Ada</b></p>"
    assert body["MessageStream"] == "broadcast"
    assert body["TrackOpens"] is False
    assert body["TrackLinks"] == "None"
    assert body["Metadata"] == {
        "nurture_message_id": str(sent.message_id),
        "nurture_idempotency_key": sent.idempotency_key,
    }
    assert {"Name": "List-Unsubscribe", "Value": UNSUBSCRIBE} in body["Headers"]
    assert {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"} in body[
        "Headers"
    ]
    assert "ReplyTo" not in body
    assert receipt.provider_message_id == "b7bc2f4a-e38e-4336-af7d-e6c392c2f817"


async def test_postmark_errors(postmark: PostmarkChannel, provider: FakeProvider) -> None:
    provider.reply(
        422,
        {
            "ErrorCode": 406,
            "Message": "You tried to send to recipient(s) that have been marked as inactive.",
        },
    )
    with pytest.raises(PermanentSendError, match="inactive"):
        await postmark.send(message())

    provider.reply(422, {"ErrorCode": 300, "Message": "Invalid 'To' address: 'nope'."})
    with pytest.raises(PermanentSendError, match="Invalid 'To'"):
        await postmark.send(message(to_address="nope"))

    provider.reply(429, {"ErrorCode": 429, "Message": "Rate limit exceeded"})
    with pytest.raises(TemporarySendError, match="Rate limit"):
        await postmark.send(message())

    provider.reply(503, {"ErrorCode": 100, "Message": "Maintenance"})
    with pytest.raises(TemporarySendError, match="Maintenance"):
        await postmark.send(message())


# --- Mailgun ------------------------------------------------------------------------------


@pytest.fixture
def mailgun(provider: FakeProvider, opened: list[HttpChannel]) -> MailgunChannel:
    channel = MailgunChannel(
        settings(
            mailgun_api_key=SecretStr("key-mg"),
            mailgun_domain="mg.nurture.example",
            mailgun_base_url=provider.url,
            email_reply_to="help@nurture.example",
        )
    )
    opened.append(channel)
    return channel


async def test_mailgun_send(mailgun: MailgunChannel, provider: FakeProvider) -> None:
    provider.reply(
        200, {"id": "<20240101.1234@mg.nurture.example>", "message": "Queued. Thank you."}
    )
    sent = message()

    receipt = await mailgun.send(sent)

    request = provider.last
    assert request.path == "/v3/mg.nurture.example/messages"
    assert request.basic_auth() == ("api", "key-mg")
    form = request.form()
    assert form["from"] == ["Nurture <hello@mail.nurture.example>"]
    assert form["to"] == ["ada@example.com"]
    assert form["subject"] == ["Welcome aboard"]
    assert form["text"] == ["Hello Ada"]
    assert form["html"] == ["<p>Hello <b>Ada</b></p>"]
    assert form["h:List-Unsubscribe"] == [UNSUBSCRIBE]
    assert form["h:List-Unsubscribe-Post"] == ["List-Unsubscribe=One-Click"]
    assert form["h:Reply-To"] == ["help@nurture.example"]
    assert form["v:nurture_message_id"] == [str(sent.message_id)]
    assert form["v:nurture_idempotency_key"] == [sent.idempotency_key]
    assert form["o:tracking"] == ["no"]
    assert form["o:tracking-clicks"] == ["no"]
    assert form["o:tracking-opens"] == ["no"]
    assert receipt.provider_message_id == "20240101.1234@mg.nurture.example"


async def test_mailgun_errors(mailgun: MailgunChannel, provider: FakeProvider) -> None:
    provider.reply(
        400, {"message": "to parameter is not a valid address. please check documentation"}
    )
    with pytest.raises(PermanentSendError, match="not a valid address"):
        await mailgun.send(message(to_address="nope"))

    provider.reply(502, {"message": "Bad gateway"})
    with pytest.raises(TemporarySendError, match="502"):
        await mailgun.send(message())


# --- Twilio -------------------------------------------------------------------------------

SID = "AC00000000000000000000000000000001"


@pytest.fixture
def twilio(provider: FakeProvider, opened: list[HttpChannel]) -> TwilioChannel:
    channel = TwilioChannel(
        settings(
            twilio_account_sid=SID,
            twilio_auth_token=SecretStr("tw-token"),
            twilio_from_number="+15005550001",
            twilio_base_url=provider.url,
        )
    )
    opened.append(channel)
    return channel


async def test_twilio_send(twilio: TwilioChannel, provider: FakeProvider) -> None:
    provider.reply(201, {"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued"})
    sent = sms(text="Your code is 1234")

    receipt = await twilio.send(sent)

    request = provider.last
    assert request.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert request.basic_auth() == (SID, "tw-token")
    assert request.headers["i-twilio-idempotency-token"] == sent.idempotency_key
    assert request.form() == {
        "To": ["+15005550006"],
        "From": ["+15005550001"],
        "Body": ["Your code is 1234"],
        "StatusCallback": ["http://localhost:8000/v1/webhooks/twilio"],
    }
    assert (receipt.provider, receipt.provider_message_id) == (
        "twilio",
        "SM0123456789abcdef0123456789abcdef",
    )


async def test_twilio_messaging_service(provider: FakeProvider, opened: list[HttpChannel]) -> None:
    channel = TwilioChannel(
        settings(
            twilio_account_sid=SID,
            twilio_auth_token=SecretStr("tw-token"),
            twilio_messaging_service_sid="MG0001",
            twilio_base_url=provider.url,
        )
    )
    opened.append(channel)
    provider.reply(201, {"sid": "SM1"})

    await channel.send(sms())

    form = provider.last.form()
    assert form["MessagingServiceSid"] == ["MG0001"]
    assert "From" not in form


async def test_twilio_errors(twilio: TwilioChannel, provider: FakeProvider) -> None:
    for code, text in (
        (21211, "The 'To' number +1500 is not a valid phone number."),
        (21610, "Attempt to send to unsubscribed recipient"),
        (21614, "'To' number is not a valid mobile number"),
    ):
        provider.reply(
            400,
            {
                "code": code,
                "message": text,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
            },
        )
        with pytest.raises(PermanentSendError, match=str(code)):
            await twilio.send(sms())

    provider.reply(429, {"code": 20429, "message": "Too Many Requests", "status": 429})
    with pytest.raises(TemporarySendError, match="Too Many Requests"):
        await twilio.send(sms())

    provider.reply(500, {"code": 20500, "message": "Internal Server Error", "status": 500})
    with pytest.raises(TemporarySendError):
        await twilio.send(sms())

    with pytest.raises(PermanentSendError, match="text"):
        await twilio.send(sms(text=None))


# --- Network failures and error text, shared by the HTTP providers -------------------------


async def test_connection_refused_and_timeout_are_temporary(
    provider: FakeProvider, opened: list[HttpChannel]
) -> None:
    nobody = SendGridChannel(
        settings(
            sendgrid_api_key=SecretStr("k"), sendgrid_base_url=f"http://127.0.0.1:{free_port()}"
        )
    )
    slow = PostmarkChannel(
        settings(
            postmark_server_token=SecretStr("k"),
            postmark_base_url=provider.url,
            provider_timeout_seconds=0.2,
        )
    )
    opened.extend([nobody, slow])

    with pytest.raises(TemporarySendError, match="ConnectError"):
        await nobody.send(message())

    provider.delay = 1.0
    with pytest.raises(TemporarySendError, match="Timeout"):
        await slow.send(message())


async def test_long_error_pages_are_truncated(
    sendgrid: SendGridChannel, provider: FakeProvider
) -> None:
    provider.replies.append(Response("<html>" + "x" * 5000 + "</html>", 503))
    with pytest.raises(TemporarySendError) as raised:
        await sendgrid.send(message())
    assert len(str(raised.value)) < 600


# --- Registry -----------------------------------------------------------------------------


async def test_registry_defaults_to_the_outbox() -> None:
    channels = channels_from_settings(settings(), async_sessionmaker())
    assert isinstance(channels["email"], OutboxChannel)
    assert channels["sms"] is channels["email"]
    await close_channels(channels)


@pytest.mark.parametrize(
    ("values", "email_class"),
    [
        ({"email_channel": "smtp"}, SmtpChannel),
        ({"email_channel": "sendgrid", "sendgrid_api_key": SecretStr("k")}, SendGridChannel),
        ({"email_channel": "postmark", "postmark_server_token": SecretStr("k")}, PostmarkChannel),
        (
            {
                "email_channel": "mailgun",
                "mailgun_api_key": SecretStr("k"),
                "mailgun_domain": "mg.example",
            },
            MailgunChannel,
        ),
    ],
)
async def test_registry_picks_the_configured_classes(
    values: dict[str, Any], email_class: type
) -> None:
    channels = channels_from_settings(
        settings(
            sms_channel="twilio",
            twilio_account_sid=SID,
            twilio_auth_token=SecretStr("t"),
            twilio_from_number="+15005550001",
            **values,
        ),
        async_sessionmaker(),
    )
    assert isinstance(channels["email"], email_class)
    assert isinstance(channels["sms"], TwilioChannel)
    await close_channels(channels)
    assert channels["sms"]._client.is_closed


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"email_channel": "sendgrid"}, "EMAIL_CHANNEL=sendgrid needs SENDGRID_API_KEY"),
        ({"email_channel": "postmark"}, "EMAIL_CHANNEL=postmark needs POSTMARK_SERVER_TOKEN"),
        (
            {"email_channel": "mailgun", "mailgun_api_key": SecretStr(" ")},
            "EMAIL_CHANNEL=mailgun needs MAILGUN_API_KEY, MAILGUN_DOMAIN",
        ),
        (
            {"email_channel": "smtp", "smtp_username": "relay-user"},
            "EMAIL_CHANNEL=smtp needs SMTP_PASSWORD",
        ),
        (
            {"sms_channel": "twilio", "twilio_account_sid": SID},
            "SMS_CHANNEL=twilio needs TWILIO_AUTH_TOKEN, "
            "TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID",
        ),
    ],
)
def test_registry_names_missing_settings(values: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError) as raised:
        channels_from_settings(settings(**values), async_sessionmaker())
    assert str(raised.value).startswith(error)
