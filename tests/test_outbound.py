"""Webhook steps' outbound guard (SSRF): private, loopback, link-local and other non-public
targets are refused unless allowlisted; the connection goes to the checked address."""

from __future__ import annotations

import json
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from nurture.journeys.definition import WebhookStep
from nurture.outbound.guard import (
    Allowlist,
    BlockedDestination,
    Destination,
    check_url,
    pinned_client,
    resolve,
)
from nurture.outbound.webhooks import (
    WebhookRefused,
    WebhookUnavailable,
    call_webhook,
    verify_signature,
)
from tests.loopback import serve

NOTHING_ALLOWED = Allowlist.parse([])


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://127.1.2.3:8080/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.7/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://100.64.0.1/", "not public"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://localhost/", "loopback"),  # a host name that resolves to loopback
    ],
)
async def test_non_public_targets_are_refused(url: str, kind: str) -> None:
    with pytest.raises(BlockedDestination, match=f"is {kind}: refused"):
        await check_url(url, NOTHING_ALLOWED)


async def test_other_schemes_and_credentials_are_refused() -> None:
    for url in ("file:///etc/passwd", "gopher://x/", "http://user:pw@example.com/"):
        with pytest.raises(BlockedDestination):
            await check_url(url, NOTHING_ALLOWED)


async def test_the_allowlist_lets_named_addresses_networks_and_hosts_through() -> None:
    allowed = Allowlist.parse(["127.0.0.1", "10.0.0.0/8", "localhost"])
    assert str((await check_url("http://127.0.0.1:9/", allowed)).address) == "127.0.0.1"
    assert str((await check_url("http://10.9.8.7/", allowed)).address) == "10.9.8.7"
    assert (await check_url("http://localhost/", allowed)).host == "localhost"
    with pytest.raises(BlockedDestination):  # only what it names
        await check_url("http://169.254.169.254/", allowed)
    with pytest.raises(BlockedDestination):
        await check_url("http://192.168.0.1/", allowed)


async def test_a_public_address_passes() -> None:
    destination = await check_url("https://93.184.215.14/x", NOTHING_ALLOWED)
    assert (destination.port, str(destination.address)) == (443, "93.184.215.14")


async def test_the_connection_goes_to_the_checked_address_with_the_urls_host() -> None:
    """No DNS rebinding: whatever `crm.example` resolves to later, the client connects to the
    address that was checked, and the request still says Host: crm.example."""
    seen: list[str] = []

    async def endpoint(request: Request) -> JSONResponse:
        seen.append(request.headers["host"])
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/", endpoint)])
    async with serve(app) as base:
        port = int(base.rsplit(":", 1)[1])
        [loopback] = await resolve("127.0.0.1", port)
        destination = Destination(
            url=f"http://crm.example:{port}/", host="crm.example", port=port, address=loopback
        )
        async with pinned_client(destination, 5) as client:
            response = await client.get(f"http://crm.example:{port}/")
            assert response.json() == {"ok": True}
            with pytest.raises(BlockedDestination):  # another host through the same client
                await client.get(f"http://other.example:{port}/")
    assert seen == [f"crm.example:{port}"]


def _step(url: str, **extra: object) -> WebhookStep:
    return WebhookStep.model_validate({"type": "webhook", "url": url, **extra})


async def test_a_webhook_is_signed_rendered_and_answers_are_sorted() -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    replies = [503, 404, 200]

    async def endpoint(request: Request) -> JSONResponse:
        received.append((dict(request.headers), await request.body()))
        status = replies.pop(0)
        return JSONResponse({"owner": {"id": "u-7"}, "error": "nope"}, status_code=status)

    app = Starlette(routes=[Route("/leads", endpoint, methods=["POST"])])
    context = {"contact": {"email": 'a"b@example.com'}, "fields": {"score": 55}}
    async with serve(app) as base:
        step = _step(
            f"{base}/leads",
            headers={"X-Score": "{{ fields.score }}"},
            body={"email": "{{ contact.email }}", "tags": ["lead", "{{ fields.score }}"]},
            save={"crm_owner": "owner.id", "missing": "a.b"},
        )
        call = {
            "template_key": "j.s",
            "idempotency_key": "e:s:1",
            "secret": b"k",
            "allowlist": Allowlist.parse(["127.0.0.1"]),
        }
        with pytest.raises(WebhookUnavailable, match="HTTP 503"):
            await call_webhook(step, context, **call)  # type: ignore[arg-type]
        with pytest.raises(WebhookRefused, match="HTTP 404"):
            await call_webhook(step, context, **call)  # type: ignore[arg-type]
        answer = await call_webhook(step, context, **call)  # type: ignore[arg-type]
        assert answer.saved == {"crm_owner": "u-7", "missing": None}
        with pytest.raises(WebhookRefused, match="loopback"):  # not allowlisted
            await call_webhook(step, context, **{**call, "allowlist": NOTHING_ALLOWED})  # type: ignore[arg-type]
    assert len(received) == 3
    headers, body = received[-1]
    assert json.loads(body) == {"email": 'a"b@example.com', "tags": ["lead", "55"]}
    assert headers["x-score"] == "55"
    assert headers["idempotency-key"] == "e:s:1"
    assert {h["idempotency-key"] for h, _ in received} == {"e:s:1"}
    assert verify_signature(
        b"k", headers["x-nurture-timestamp"], body, headers["x-nurture-signature"]
    )
    assert not verify_signature(
        b"other", headers["x-nurture-timestamp"], body, headers["x-nurture-signature"]
    )
    assert not verify_signature(
        b"k", headers["x-nurture-timestamp"], body + b" ", headers["x-nurture-signature"]
    )


async def test_over_tls_the_pinned_connection_checks_the_urls_host(tmp_path: Path) -> None:
    """The certificate is for crm.example only: the pinned connection to 127.0.0.1 succeeds
    because the server name sent (SNI) and checked is the URL's host, not the address."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crm.example")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("crm.example")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    trust = ssl.create_default_context(cafile=str(cert_file))

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"host": request.headers["host"]})

    app = Starlette(routes=[Route("/", endpoint)])
    tls = {"ssl_certfile": str(cert_file), "ssl_keyfile": str(key_file)}
    async with serve(app, **tls) as base:
        port = int(base.rsplit(":", 1)[1])
        [loopback] = await resolve("127.0.0.1", port)
        good = Destination(f"https://crm.example:{port}/", "crm.example", port, loopback)
        async with pinned_client(good, 5, verify=trust) as client:
            answer = await client.get(f"https://crm.example:{port}/")
        assert answer.json() == {"host": f"crm.example:{port}"}
        # The same server named by its address: the certificate does not match, refused.
        other = Destination(f"https://127.0.0.1:{port}/", "127.0.0.1", port, loopback)
        async with pinned_client(other, 5, verify=trust) as client:
            with pytest.raises(httpx.ConnectError, match=r"certificate|hostname|match"):
                await client.get(f"https://127.0.0.1:{port}/")
