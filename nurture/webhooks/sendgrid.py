"""SendGrid's signed Event Webhook.

SendGrid signs `timestamp + raw body` with ECDSA P-256 / SHA-256 and sends the base64 DER
signature and the timestamp in headers; we verify with the "verification key" shown in its
mail settings (base64 DER SubjectPublicKeyInfo, or PEM). The body is a JSON array of events.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from nurture.errors import BadRequest, Unauthorized
from nurture.settings import Settings
from nurture.webhooks.base import (
    MESSAGE_ID_FIELD,
    Kind,
    ProviderEvent,
    WebhookRequest,
    dedupe_key,
    from_unix,
    our_message_id,
    parse_json,
    text,
)

PROVIDER = "sendgrid"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# "dropped" means SendGrid refused to send; its reason tells us whether it is because of
# SendGrid's own suppression list, which we mirror so both lists agree.
_DROPPED_REASONS: dict[str, Kind] = {
    "Bounced Address": "bounced",
    "Spam Reporting Address": "complained",
    "Unsubscribed Address": "unsubscribed",
}


@lru_cache(maxsize=4)
def _public_key(configured: str) -> ec.EllipticCurvePublicKey:
    data = configured.strip()
    try:
        if data.startswith("-----BEGIN"):
            key = load_pem_public_key(data.encode())
        else:
            key = load_der_public_key(base64.b64decode(data, validate=True))
    except (ValueError, binascii.Error) as err:
        raise Unauthorized(
            "SENDGRID_WEBHOOK_PUBLIC_KEY is not a base64 DER or PEM public key"
        ) from err
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Unauthorized("SENDGRID_WEBHOOK_PUBLIC_KEY is not an elliptic-curve key")
    return key


def verify(request: WebhookRequest, settings: Settings) -> None:
    if not settings.sendgrid_webhook_public_key:
        raise Unauthorized(
            "SendGrid webhooks are not configured: set SENDGRID_WEBHOOK_PUBLIC_KEY "
            "to the verification key of the signed event webhook"
        )
    signature = request.header(SIGNATURE_HEADER)
    timestamp = request.header(TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise Unauthorized(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header")
    key = _public_key(settings.sendgrid_webhook_public_key)
    try:
        key.verify(
            base64.b64decode(signature, validate=True),
            timestamp.encode() + request.body,
            ec.ECDSA(hashes.SHA256()),
        )
    except (InvalidSignature, ValueError, binascii.Error) as err:
        raise Unauthorized("SendGrid signature does not match the body") from err


def parse(request: WebhookRequest) -> list[ProviderEvent]:
    payload = parse_json(request.body)
    if not isinstance(payload, list):
        raise BadRequest("SendGrid sends a JSON array of events")
    events = []
    for item in payload:
        if not isinstance(item, dict):
            raise BadRequest("a SendGrid event is not a JSON object")
        event = _event(item)
        if event is not None:
            events.append(event)
    return events


def receive(request: WebhookRequest, settings: Settings) -> list[ProviderEvent]:
    verify(request, settings)
    return parse(request)


def _event(item: dict[str, Any]) -> ProviderEvent | None:
    name = item.get("event")
    permanent = False
    kind: Kind
    if name == "delivered":
        kind = "delivered"
    elif name == "bounce":
        kind = "bounced"
        # "blocked" is a refusal that may pass later (reputation, content); "bounce" is final.
        permanent = item.get("type", "bounce") == "bounce"
    elif name == "dropped":
        kind = _DROPPED_REASONS.get(str(item.get("reason")), "failed")
        permanent = kind == "bounced"
    elif name == "deferred":
        kind = "deferred"
    elif name == "open":
        kind = "opened"
    elif name == "click":
        kind = "clicked"
    elif name == "spamreport":
        kind = "complained"
    elif name in ("unsubscribe", "group_unsubscribe"):
        kind = "unsubscribed"
    else:
        # processed, group_resubscribe...: nothing we store or act on.
        return None
    # sg_message_id is "<X-Message-Id>.<filter/server suffix>"; the prefix is what the send
    # API returned and what the message row holds.
    sg_message_id = text(item.get("sg_message_id"))
    provider_message_id = sg_message_id.split(".", 1)[0] if sg_message_id else None
    event_id = text(item.get("sg_event_id"))
    if event_id is None:
        # Every documented event has one; fall back to the content, so a retried batch
        # still deduplicates.
        event_id = hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()
    return ProviderEvent(
        provider=PROVIDER,
        dedupe_key=dedupe_key(PROVIDER, event_id),
        kind=kind,
        provider_message_id=provider_message_id,
        message_id=our_message_id(item.get(MESSAGE_ID_FIELD)),
        permanent=permanent,
        url=text(item.get("url")) if kind == "clicked" else None,
        machine=kind == "opened" and item.get("sg_machine_open") is True,
        occurred_at=from_unix(item.get("timestamp")),
        raw=item,
    )
