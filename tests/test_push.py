"""Push (issue 13): device tokens on a contact, the send_push step, Firebase Cloud Messaging
HTTP v1 with its service-account OAuth token, tested against a loopback server that speaks
FCM's documented request and error shapes; unregistered tokens are dropped."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlmodel import col, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.channels.base import ChannelSender, OutgoingMessage
from nurture.channels.fcm import SCOPE, FcmChannel, ServiceAccount
from nurture.channels.outbox import OutboxChannel
from nurture.channels.push import InvalidDeviceToken
from nurture.db.engine import SessionFactory
from nurture.db.models import Message, OutboxMessage
from tests.conftest import _terminate_started
from tests.loopback import serve
from tests.support import finish, make_contact, ok, publish_journey, start, steps_of

PROJECT = "nurture-demo"


def _fcm_error(
    code: int, status: str, message: str, error_code: str | None, **extra: Any
) -> JSONResponse:
    details: list[dict[str, Any]] = []
    if error_code:
        details.append(
            {
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": error_code,
            }
        )
    if extra.get("field"):
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": extra["field"], "description": message}],
            }
        )
    body = {"error": {"code": code, "message": message, "status": status, "details": details}}
    return JSONResponse(body, status_code=code)


@dataclass
class FakeFcm:
    """FCM's OAuth token endpoint and messages:send, as documented."""

    public_key: Any
    base: str = ""
    tokens_issued: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)  # access tokens answered with 401

    async def token(self, request: Request) -> JSONResponse:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        claims = jwt.decode(
            str(form["assertion"]),
            self.public_key,
            algorithms=["RS256"],
            audience=f"{self.base}/token",
        )
        assert claims["scope"] == SCOPE and claims["iss"].endswith("iam.gserviceaccount.com")
        self.tokens_issued += 1
        return JSONResponse(
            {
                "access_token": f"ya29.{self.tokens_issued}",
                "expires_in": 3599,
                "token_type": "Bearer",
            }
        )

    async def send(self, request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ya29.") or auth.removeprefix("Bearer ") in self.revoked:
            return _fcm_error(401, "UNAUTHENTICATED", "Request had invalid authentication", None)
        if request.path_params["project"] != PROJECT:
            return _fcm_error(403, "PERMISSION_DENIED", "wrong project", "SENDER_ID_MISMATCH")
        message = (await request.json())["message"]
        token = message["token"]
        if token.startswith("dead"):
            return _fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        if token.startswith("garbled"):
            return _fcm_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                "INVALID_ARGUMENT",
                field="message.token",
            )
        if token.startswith("busy"):
            return _fcm_error(
                503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE"
            )
        self.sent.append(message)
        return JSONResponse({"name": f"projects/{PROJECT}/messages/{len(self.sent)}"})


@pytest.fixture
async def fcm(tmp_path: Path) -> AsyncIterator[tuple[FakeFcm, Path]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fake = FakeFcm(public_key=key.public_key())
    app = Starlette(
        routes=[
            Route("/token", fake.token, methods=["POST"]),
            Route("/v1/projects/{project}/messages:send", fake.send, methods=["POST"]),
        ]
    )
    async with serve(app) as base:
        fake.base = base
        key_file = tmp_path / "service-account.json"
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        key_file.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": PROJECT,
                    "private_key_id": "k1",
                    "private_key": pem,
                    "client_email": "nurture@nurture-demo.iam.gserviceaccount.com",
                    "token_uri": f"{base}/token",
                }
            )
        )
        yield fake, key_file


def _push(token: str) -> OutgoingMessage:
    return OutgoingMessage(
        idempotency_key=f"k:{token}",
        message_id=uuid.uuid4(),
        channel="push",
        to_address=token,
        template="push:s",
        subject="Hi",
        text="Body",
        variables={"data": {"deep_link": "app://offer"}},
    )


async def test_the_fcm_provider_speaks_http_v1(fcm: tuple[FakeFcm, Path]) -> None:
    fake, key_file = fcm
    channel = FcmChannel(ServiceAccount.from_file(key_file), PROJECT, fake.base)
    try:
        receipt = await channel.send(_push("good-1"))
        assert receipt.provider_message_id == f"projects/{PROJECT}/messages/1"
        assert fake.sent[0] == {
            "token": "good-1",
            "notification": {"title": "Hi", "body": "Body"},
            "data": {"deep_link": "app://offer"},
        }
        await channel.send(_push("good-2"))
        assert fake.tokens_issued == 1  # the access token is kept
        fake.revoked.add("ya29.1")  # expired early: a 401 renews it once
        await channel.send(_push("good-3"))
        assert fake.tokens_issued == 2 and len(fake.sent) == 3
        for token in ("dead-1", "garbled-1"):
            with pytest.raises(InvalidDeviceToken):
                await channel.send(_push(token))
        with pytest.raises(Exception, match="fcm answered 503") as err:
            await channel.send(_push("busy-1"))
        assert not isinstance(err.value, InvalidDeviceToken)
    finally:
        await channel.aclose()


JOURNEY: dict[str, Any] = {
    "key": "app-offer",
    "name": "App offer",
    "start": "push",
    "steps": {
        "push": {
            "type": "send_push",
            "title": "{{ fields.first_name | default('Hi') }}, your offer",
            "body": "20% off until Friday",
            "data": {"deep_link": "app://offers/{{ fields.offer_id }}"},
        }
    },
}


async def test_a_push_reaches_fcm_and_an_unregistered_token_is_dropped(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
    fcm: tuple[FakeFcm, Path],
) -> None:
    from worker import build_worker

    fake, key_file = fcm
    channel = FcmChannel(ServiceAccount.from_file(key_file), PROJECT, fake.base)
    outbox = OutboxChannel(sessions)
    await publish_journey(sessions, JOURNEY)
    contact_id = await make_contact(sessions, fields={"first_name": "Ada", "offer_id": "x7"})
    for token, platform in (("good-phone", "android"), ("dead-tablet", "ios")):
        body = {"token": token, "platform": platform}
        ok(await api.post(f"/v1/contacts/{contact_id}/devices", json=body), 201)
    ok(await api.post(f"/v1/contacts/{contact_id}/devices", json={"token": "good-phone"}))

    channels: dict[str, ChannelSender] = {"email": outbox, "sms": outbox, "push": channel}
    try:
        async with build_worker(client, sessions, task_queue, channels=channels):
            _, handle = await start(sessions, client, task_queue, "app-offer", contact_id)
            result = await finish(env, handle)
            await _terminate_started()
    finally:
        await channel.aclose()

    assert steps_of(result) == ["push"]
    assert result.path[0].outcome == "sent to 1 device(s), 1 invalid token(s) removed"
    assert fake.sent == [
        {
            "token": "good-phone",
            "notification": {"title": "Ada, your offer", "body": "20% off until Friday"},
            "data": {"deep_link": "app://offers/x7"},
        }
    ]
    devices = ok(await api.get(f"/v1/contacts/{contact_id}/devices"))["items"]
    assert [d["token"] for d in devices] == ["good-phone"]
    async with sessions() as session:
        message = await session.scalar(select(Message).where(col(Message.contact_id) == contact_id))
    assert message is not None
    assert (message.channel, message.status, message.provider) == ("push", "sent", "fcm")
    timeline = ok(await api.get(f"/v1/contacts/{contact_id}/timeline"))
    words = [entry["summary"] for entry in timeline["items"]]
    assert "Push device …d-tablet removed (push:fcm)" in words
    assert "Push device …d-tablet added (API)" in words
    assert any(w.startswith("Sent push 'Ada, your offer' (journey App offer") for w in words), words


async def test_the_development_outbox_takes_pushes(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
    worker: None,
) -> None:
    await publish_journey(sessions, JOURNEY)
    contact_id = await make_contact(sessions)
    no_device = await make_contact(sessions)
    ok(await api.post(f"/v1/contacts/{contact_id}/devices", json={"token": "tok-1"}), 201)
    ok(await api.post(f"/v1/contacts/{contact_id}/devices", json={"token": "tok-2"}), 201)
    _, handle = await start(sessions, client, task_queue, "app-offer", contact_id)
    assert (await finish(env, handle)).path[0].outcome == "sent to 2 device(s)"
    _, handle = await start(sessions, client, task_queue, "app-offer", no_device)
    assert (await finish(env, handle)).path[0].outcome == "skipped: no_device_token"
    refused = await make_contact(sessions, consent={"push": "revoked"})
    ok(await api.post(f"/v1/contacts/{refused}/devices", json={"token": "tok-3"}), 201)
    _, handle = await start(sessions, client, task_queue, "app-offer", refused)
    assert (await finish(env, handle)).path[0].outcome == "skipped: push_consent_revoked"
    assert (await api.delete(f"/v1/contacts/{refused}/devices/tok-3")).status_code == 204
    assert (await api.delete(f"/v1/contacts/{refused}/devices/tok-3")).status_code == 404
    assert ok(await api.get(f"/v1/contacts/{refused}/devices"))["items"] == []
    async with sessions() as session:
        rows = list(
            await session.scalars(select(OutboxMessage).order_by(col(OutboxMessage.to_address)))
        )
    assert [(r.channel, r.to_address, r.payload["subject"]) for r in rows] == [
        ("push", "tok-1", "Hi, your offer"),
        ("push", "tok-2", "Hi, your offer"),
    ]
    assert rows[0].payload["variables"]["data"] == {"deep_link": "app://offers/"}
