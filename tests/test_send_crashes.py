"""Sends exactly once, as far as a provider lets us know: the worker is SIGKILLed while
providers hold messages they have already accepted (the provider took them, its answer never
reached us), and the retry, on a fresh worker, must not send them twice.

Real local peers: an aiosmtpd server, and one loopback HTTP server answering like SendGrid,
Postmark, Mailgun and Twilio do (sends, and the lookups their APIs document). Process-level
(the worker runs in a process of its own, SIGKILLed at the worst moment), hence marked slow;
it runs in CI with the rest of the suite.

The moment of the kill is exact, so are the counts: each peer answers the first ANSWERED sends
and takes every later one without answering; the worker is killed once the answered ones are
recorded sent and the other HELD are all in the peer's hands (recorded `attempting`). No send
is half-way anywhere else then, so which ones a second worker must settle is known."""

from __future__ import annotations

import asyncio
import contextlib
import email
import os
import signal
import socket
import sys
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.policy import default as default_policy
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

import pytest
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import func, select
from sqlmodel import col
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.client import Client

from nurture.channels.registry import channels_from_settings, close_channels
from nurture.db.engine import SessionFactory
from nurture.db.models import Enrollment, Message, utcnow
from nurture.journeys.enrollments import EnrollmentOptions, enroll
from nurture.settings import Settings
from tests.support import make_contact, publish_journey
from worker import build_worker

pytestmark = pytest.mark.slow

CONTACTS = 8  # enrollments, each sending one message
ANSWERED = 3  # sends the provider answers before the kill: complete, recorded sent
HELD = CONTACTS - ANSWERED  # sends it takes and leaves unanswered until the worker is dead
# Longer than the wait for the kill on a busy machine: a held call that timed out in the first
# worker would be retried there, before the kill (within the sends' 2-minute start-to-close).
PROVIDER_TIMEOUT = "100"


@dataclass
class Gate:
    """A peer's admission: the first ANSWERED sends are answered, every later one is taken and
    left unanswered until the worker is dead (`release`); from then on all are answered. The
    SMTP peer runs on a loop and thread of its own (aiosmtpd's), the HTTP peer on the test's:
    a lock, and each held call woken on its own loop."""

    answered: list[str] = field(default_factory=list)  # by the message id the peer read
    held: list[str] = field(default_factory=list)
    released: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)

    async def admit(self, message_id: str) -> None:
        with self.lock:
            if self.released:
                return
            if len(self.answered) < ANSWERED:
                self.answered.append(message_id)
                return
            self.held.append(message_id)
            answer = asyncio.Event()
            self.waiting.append((asyncio.get_running_loop(), answer))
        await answer.wait()

    def all_held(self) -> bool:
        with self.lock:
            return len(self.held) >= HELD

    def release(self) -> None:
        with self.lock:
            self.released = True
            waiting, self.waiting = self.waiting, []
        for loop, answer in waiting:
            with contextlib.suppress(RuntimeError):  # that peer has stopped already
                loop.call_soon_threadsafe(answer.set)


class SmtpHold:
    """aiosmtpd handler: keeps each message (by its Message-ID), then answers 250 as the gate
    says (at once, or once the worker is dead)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.message_ids: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        parsed = email.message_from_bytes(content, policy=default_policy)
        message_id = str(parsed["X-Nurture-Message-Id"])
        self.message_ids.append(message_id)
        await self.gate.admit(message_id)
        return "250 Message accepted for delivery"


@dataclass
class Accepted:
    provider_id: str
    message_id: str  # ours
    to: str
    body: str
    created: str


async def _form(request: Request) -> dict[str, str]:
    """A form-encoded body, as Mailgun and Twilio take them (no python-multipart needed)."""
    return {name: values[0] for name, values in parse_qs((await request.body()).decode()).items()}


class HttpProviders:
    """SendGrid, Postmark, Mailgun and Twilio on one loopback server: sends are kept, then
    answered as the gate says; the lookups answer from what was kept (at once), as the
    providers' APIs document them."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.accepted: list[Accepted] = []

    def _keep(self, message_id: str, to: str, body: str = "") -> Accepted:
        kept = Accepted(
            f"p-{uuid.uuid4().hex[:12]}", message_id, to, body, format_datetime(utcnow())
        )
        self.accepted.append(kept)
        return kept

    async def sendgrid(self, request: Request) -> Response:
        body = await request.json()
        personalization = body["personalizations"][0]
        kept = self._keep(
            personalization["custom_args"]["nurture_message_id"], personalization["to"][0]["email"]
        )
        await self.gate.admit(kept.message_id)
        return Response(status_code=202, headers={"X-Message-Id": kept.provider_id})

    async def postmark_send(self, request: Request) -> Response:
        body = await request.json()
        kept = self._keep(body["Metadata"]["nurture_message_id"], body["To"])
        await self.gate.admit(kept.message_id)
        return JSONResponse({"MessageID": kept.provider_id, "ErrorCode": 0})

    async def postmark_search(self, request: Request) -> Response:
        wanted = request.query_params["metadata_nurture_message_id"]
        found = [
            {"MessageID": kept.provider_id, "Metadata": {"nurture_message_id": wanted}}
            for kept in self.accepted
            if kept.message_id == wanted and kept.to == request.query_params["recipient"]
        ]
        return JSONResponse({"TotalCount": len(found), "Messages": found})

    async def mailgun_send(self, request: Request) -> Response:
        form = await _form(request)
        kept = self._keep(form["v:nurture_message_id"], form["to"])
        await self.gate.admit(kept.message_id)
        return JSONResponse({"id": f"<{kept.provider_id}>", "message": "Queued. Thank you."})

    async def mailgun_events(self, request: Request) -> Response:
        assert request.query_params["event"] == "accepted"
        items = [
            {
                "event": "accepted",
                "recipient": kept.to,
                "user-variables": {"nurture_message_id": kept.message_id},
                "message": {"headers": {"message-id": kept.provider_id}},
            }
            for kept in self.accepted
            if kept.to == request.query_params["recipient"]
        ]
        return JSONResponse({"items": items, "paging": {}})

    async def twilio_send(self, request: Request) -> Response:
        form = await _form(request)
        kept = self._keep(form["To"], form["To"], form["Body"])  # one recipient each
        await self.gate.admit(kept.message_id)
        return JSONResponse({"sid": kept.provider_id, "status": "queued"}, 201)

    async def twilio_list(self, request: Request) -> Response:
        messages = [
            {
                "sid": kept.provider_id,
                "to": kept.to,
                "body": kept.body,
                "date_created": kept.created,
            }
            for kept in reversed(self.accepted)
            if kept.to == request.query_params["To"]
        ]
        return JSONResponse({"messages": messages})

    def app(self) -> Starlette:
        twilio = "/2010-04-01/Accounts/ACtest/Messages.json"
        return Starlette(
            routes=[
                Route("/v3/mail/send", self.sendgrid, methods=["POST"]),
                Route("/email", self.postmark_send, methods=["POST"]),
                Route("/messages/outbound", self.postmark_search, methods=["GET"]),
                Route("/v3/mg.test/messages", self.mailgun_send, methods=["POST"]),
                Route("/v3/mg.test/events", self.mailgun_events, methods=["GET"]),
                Route(twilio, self.twilio_send, methods=["POST"]),
                Route(twilio, self.twilio_list, methods=["GET"]),
            ]
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def smtp_peer(gate: Gate) -> Iterator[tuple[SmtpHold, int]]:
    handler, port = SmtpHold(gate), _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@contextlib.asynccontextmanager
async def http_peer(gate: Gate) -> AsyncIterator[tuple[HttpProviders, str]]:
    providers = HttpProviders(gate)
    server = uvicorn.Server(uvicorn.Config(providers.app(), lifespan="off", log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield providers, url
    finally:
        server.should_exit = True
        await task
        sock.close()


def _channel_settings(channel: str, url: str, smtp_port: int) -> dict[str, str]:
    """The environment a worker needs to send through `channel` to the local peers."""
    common = {
        "SECRET_KEY": "k" * 40,
        "EMAIL_FROM": "Nurture <hello@nurture.test>",
        "PROVIDER_TIMEOUT_SECONDS": PROVIDER_TIMEOUT,
    }
    match channel:
        case "smtp":
            return {
                **common,
                "EMAIL_CHANNEL": "smtp",
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(smtp_port),
                "SMTP_SECURITY": "none",
            }
        case "sendgrid":
            return {
                **common,
                "EMAIL_CHANNEL": "sendgrid",
                "SENDGRID_API_KEY": "SG.test",
                "SENDGRID_BASE_URL": url,
            }
        case "postmark":
            return {
                **common,
                "EMAIL_CHANNEL": "postmark",
                "POSTMARK_SERVER_TOKEN": "pm-test",
                "POSTMARK_BASE_URL": url,
            }
        case "mailgun":
            return {
                **common,
                "EMAIL_CHANNEL": "mailgun",
                "MAILGUN_API_KEY": "key-test",
                "MAILGUN_DOMAIN": "mg.test",
                "MAILGUN_BASE_URL": url,
            }
        case "twilio":
            return {
                **common,
                "SMS_CHANNEL": "twilio",
                "TWILIO_ACCOUNT_SID": "ACtest",
                "TWILIO_AUTH_TOKEN": "tw-test",
                "TWILIO_FROM_NUMBER": "+15005550006",
                "TWILIO_BASE_URL": url,
            }
    raise AssertionError(channel)


def _journey(channel: str) -> dict[str, Any]:
    sms = channel == "twilio"
    return {
        "key": f"crash-{channel}",
        "name": "crash",
        "trigger": {"type": "api"},
        "start": "hello",
        "steps": {
            "hello": {
                "type": "send_sms" if sms else "send_email",
                "template": f"hello-{channel}",
                "next": "done",
            },
            "done": {"type": "exit", "reason": "done"},
        },
    }


@dataclass
class Scenario:
    channel: str
    uncertain_sends: str
    gate: Gate = field(default_factory=Gate)
    task_queue: str = field(default_factory=lambda: f"crash-{uuid.uuid4()}")
    at_kill: dict[str, str] = field(default_factory=dict)  # ours, by message id
    statuses: dict[str, str] = field(default_factory=dict)  # ours, by message id, at the end
    received: Counter[str] = field(default_factory=Counter)  # what the provider accepted
    provider_ids: set[str] = field(default_factory=set)  # the provider's ids it answered with

    @property
    def key(self) -> str:
        return f"crash-{self.channel}-{self.uncertain_sends}"


async def _kill_mid_send(
    scenario: Scenario,
    sessions: SessionFactory,
    client: Client,
    database_url: str,
    url: str,
    smtp_port: int,
) -> None:
    """Enroll CONTACTS contacts; the first worker process is killed with ANSWERED messages
    recorded sent and HELD accepted and unanswered; a fresh worker (in this process) finishes.
    Fills in `at_kill` and `statuses`."""
    values = {
        **_channel_settings(scenario.channel, url, smtp_port),
        "UNCERTAIN_SENDS": scenario.uncertain_sends,
    }
    journey = _journey(scenario.channel)
    journey["key"] = scenario.key
    journey["steps"]["hello"]["template"] = scenario.key
    await publish_journey(sessions, journey)
    contacts = [
        await make_contact(sessions, phone=f"+1500{uuid.uuid4().int % 10**7:07d}")
        for _ in range(CONTACTS)
    ]
    first = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.worker_process",
        database_url,
        client.service_client.config.target_host,
        scenario.task_queue,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **values},
    )
    try:
        assert first.stdout is not None
        assert await asyncio.wait_for(first.stdout.readline(), 120) == b"ready\n"
        options = EnrollmentOptions(scenario.task_queue)
        for contact_id in contacts:
            await enroll(sessions, client, options, scenario.key, contact_id)
        scenario.at_kill = await _every_send_answered_or_held(
            scenario.gate, sessions, contacts, within=180
        )
        first.send_signal(signal.SIGKILL)
    finally:
        if first.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                first.kill()
        await first.wait()
        # Only now: an answer to a held call must never reach the first worker.
        scenario.gate.release()

    settings = Settings.model_validate(
        {name.lower(): value for name, value in values.items()}
        | {"temporal_task_queue": scenario.task_queue}
    )
    channels = channels_from_settings(settings, sessions)
    try:
        # The dead worker's sends time out (start-to-close, 2 minutes: real time, as the
        # test server does not skip past an activity a worker took and never finished) and
        # are retried here.
        async with build_worker(
            client, sessions, scenario.task_queue, channels=channels, settings=settings
        ):
            await _ended(sessions, contacts, within=400)
    finally:
        await close_channels(channels)
    scenario.statuses = await _statuses(sessions, contacts)


async def _statuses(sessions: SessionFactory, contacts: list[uuid.UUID]) -> dict[str, str]:
    async with sessions() as session:
        rows = await session.execute(
            select(col(Message.id), col(Message.status)).where(
                col(Message.contact_id).in_(contacts)
            )
        )
        return {str(message_id): status for message_id, status in rows}


async def _every_send_answered_or_held(
    gate: Gate, sessions: SessionFactory, contacts: list[uuid.UUID], within: float
) -> dict[str, str]:
    """Waits for the moment to kill: HELD calls held by the peer, and the messages recorded
    ANSWERED `sent` and HELD `attempting` (every send accounted for: none half-way)."""
    wanted = {"sent": ANSWERED, "attempting": HELD}
    async with asyncio.timeout(within):
        while True:
            statuses = await _statuses(sessions, contacts)
            if gate.all_held() and Counter(statuses.values()) == wanted:
                return statuses
            await asyncio.sleep(0.1)


async def _ended(sessions: SessionFactory, contacts: list[uuid.UUID], within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            async with sessions() as session:
                in_flight = await session.scalar(
                    select(func.count())
                    .select_from(Enrollment)
                    .where(
                        col(Enrollment.contact_id).in_(contacts),
                        col(Enrollment.status).in_(("pending", "active")),
                    )
                )
            if in_flight == 0:
                return
            await asyncio.sleep(0.5)


async def _run(
    scenario: Scenario, sessions: SessionFactory, client: Client, database_url: str
) -> None:
    try:
        await _run_peer(scenario, sessions, client, database_url)
    finally:
        scenario.gate.release()  # a scenario that failed early holds nothing back


async def _run_peer(
    scenario: Scenario, sessions: SessionFactory, client: Client, database_url: str
) -> None:
    if scenario.channel == "smtp":
        with smtp_peer(scenario.gate) as (handler, port):
            await _kill_mid_send(scenario, sessions, client, database_url, "", port)
            scenario.received = Counter(handler.message_ids)
        return
    async with http_peer(scenario.gate) as (providers, url):
        await _kill_mid_send(scenario, sessions, client, database_url, url, 0)
        scenario.received = Counter(kept.message_id for kept in providers.accepted)
        scenario.provider_ids = {kept.provider_id for kept in providers.accepted}


async def test_a_worker_killed_mid_send_sends_nothing_twice_where_the_provider_can_tell(
    sessions: SessionFactory, client: Client, database_url: str
) -> None:
    scenarios = {
        (channel, choice): Scenario(channel, choice)
        for channel, choice in [
            ("smtp", "unknown"),
            ("smtp", "resend"),
            ("sendgrid", "unknown"),
            ("postmark", "resend"),
            ("mailgun", "resend"),
            ("twilio", "resend"),
        ]
    }
    # All at once, each with its own worker process, task queue and peer: one wait for the
    # dead workers' send timeouts instead of one per channel.
    outcomes = await asyncio.gather(
        *(_run(scenario, sessions, client, database_url) for scenario in scenarios.values()),
        return_exceptions=True,
    )
    for key, outcome in zip(scenarios, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            raise AssertionError(f"scenario {key} failed") from outcome
    for (channel, choice), scenario in scenarios.items():  # the figures in docs/operations.md
        print(
            f"{channel} UNCERTAIN_SENDS={choice}: {sum(scenario.received.values())} accepted "
            f"for {len(scenario.statuses)} messages, "
            f"{sum(1 for n in scenario.received.values() if n > 1)} twice, "
            f"statuses {dict(Counter(scenario.statuses.values()))}"
        )
    for (channel, choice), scenario in scenarios.items():
        statuses, received, gate = scenario.statuses, scenario.received, scenario.gate
        assert len(statuses) == CONTACTS, (channel, statuses)
        # The kill came when every send was answered (and recorded) or held, no other call made.
        assert (len(gate.answered), len(gate.held)) == (ANSWERED, HELD), (channel, gate)
        assert len(set(gate.answered + gate.held)) == CONTACTS, (channel, gate)
        if channel == "twilio":  # Twilio's peer knows a message by its number, not our id
            assert received == Counter(gate.answered + gate.held), (channel, received)
        else:
            sent_at_kill = {m for m, status in scenario.at_kill.items() if status == "sent"}
            assert sent_at_kill == set(gate.answered), channel
            assert set(gate.answered + gate.held) == set(statuses), channel
        if channel in ("postmark", "mailgun", "twilio"):
            # Asked, the provider said it had the held messages: recorded sent, not sent again.
            assert set(statuses.values()) == {"sent"}, (channel, statuses)
            assert received == Counter(gate.answered + gate.held), (channel, received)
            async with sessions() as session:
                recorded = set(
                    await session.scalars(
                        select(col(Message.provider_message_id)).where(
                            col(Message.id).in_([uuid.UUID(m) for m in statuses])
                        )
                    )
                )
            assert recorded == scenario.provider_ids, channel
        elif choice == "unknown":
            # Cannot be asked: the held messages are recorded unknown and not sent again (the
            # provider does have them); the answered ones stay sent.
            assert received == Counter(gate.answered + gate.held), (channel, received)  # once
            unknown = {m for m, status in statuses.items() if status == "unknown"}
            assert unknown == set(gate.held), (channel, statuses)
            sent = {m for m, status in statuses.items() if status == "sent"}
            assert sent == set(gate.answered), (channel, statuses)
        else:
            # Sent again: none lost, exactly the held ones twice (a relay that dedupes on
            # Message-ID drops the second copy), the answered ones once.
            assert received == Counter(gate.answered + gate.held * 2), (channel, received)
            assert set(statuses.values()) == {"sent"}, (channel, statuses)
