"""Postmark webhooks: one JSON object per request, authenticated by HTTP basic auth.

Postmark signs nothing; the webhook URL is configured with credentials we chose, and the
request carries them. Postmark also gives most records no event id, so the dedupe key is
built from what identifies the record (message, type, time, link).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from nurture.errors import Unauthorized
from nurture.settings import Settings
from nurture.webhooks.base import (
    MESSAGE_ID_FIELD,
    Kind,
    ProviderEvent,
    WebhookRequest,
    dedupe_key,
    from_iso,
    our_message_id,
    parse_json,
    require_object,
    text,
)

PROVIDER = "postmark"

# Bounce types that say the address itself is bad; the rest (SoftBounce, Transient,
# DnsError, AutoResponder...) may pass another day.
_HARD_BOUNCES = {"HardBounce", "BadEmailAddress"}

# Why Postmark stopped sending to a recipient (SubscriptionChange with SuppressSending).
_SUPPRESSION_REASONS: dict[str, Kind] = {
    "HardBounce": "bounced",
    "SpamComplaint": "complained",
    "ManualSuppression": "unsubscribed",
}


def receive(request: WebhookRequest, settings: Settings) -> list[ProviderEvent]:
    verify(request, settings)
    record = require_object(parse_json(request.body), "the Postmark body")
    event = _event(record)
    return [event] if event is not None else []


def verify(request: WebhookRequest, settings: Settings) -> None:
    username = settings.postmark_webhook_username
    password = settings.postmark_webhook_password
    if not username or password is None:
        raise Unauthorized(
            "Postmark webhooks are not configured: set POSTMARK_WEBHOOK_USERNAME and "
            "POSTMARK_WEBHOOK_PASSWORD (and put them in the webhook URL at Postmark)"
        )
    given = request.header("Authorization") or ""
    scheme, _, encoded = given.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise Unauthorized("missing HTTP basic credentials")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (ValueError, binascii.Error) as err:
        raise Unauthorized("malformed HTTP basic credentials") from err
    user, _, secret = decoded.partition(b":")
    # Both compared in constant time, and both always compared, so timing does not tell
    # which of the two was wrong.
    user_ok = hmac.compare_digest(user, username.encode())
    secret_ok = hmac.compare_digest(secret, password.get_secret_value().encode())
    if not (user_ok and secret_ok):
        raise Unauthorized("wrong Postmark webhook credentials")


def _event(record: dict[str, Any]) -> ProviderEvent | None:
    record_type = record.get("RecordType")
    message_id = text(record.get("MessageID"))
    permanent = False
    url = None
    kind: Kind
    if record_type == "Delivery":
        kind = "delivered"
        at = record.get("DeliveredAt")
        key: tuple[object, ...] = ("delivery", message_id, record.get("Recipient"))
    elif record_type == "Bounce":
        bounce_type = str(record.get("Type") or "")
        kind = "complained" if bounce_type == "SpamComplaint" else "bounced"
        permanent = bounce_type in _HARD_BOUNCES
        at = record.get("BouncedAt")
        key = ("bounce", record.get("ID") or message_id)
    elif record_type == "SpamComplaint":
        kind = "complained"
        at = record.get("BouncedAt")
        key = ("complaint", record.get("ID") or message_id)
    elif record_type == "Open":
        kind = "opened"
        at = record.get("ReceivedAt")
        key = ("open", message_id, at)
    elif record_type == "Click":
        kind = "clicked"
        url = text(record.get("OriginalLink"))
        at = record.get("ReceivedAt")
        key = ("click", message_id, at, url)
    elif record_type == "SubscriptionChange":
        # A reactivation (SuppressSending false) cannot lift our suppression: only the
        # contact's own consent can, through the API.
        if record.get("SuppressSending") is not True:
            return None
        reason = str(record.get("SuppressionReason") or "ManualSuppression")
        kind = _SUPPRESSION_REASONS.get(reason, "unsubscribed")
        permanent = kind == "bounced"
        at = record.get("ChangedAt")
        key = ("subscription", message_id, at)
    else:
        return None
    metadata = record.get("Metadata")
    return ProviderEvent(
        provider=PROVIDER,
        dedupe_key=dedupe_key(PROVIDER, *key),
        kind=kind,
        provider_message_id=message_id,
        message_id=our_message_id(metadata.get(MESSAGE_ID_FIELD))
        if isinstance(metadata, dict)
        else None,
        permanent=permanent,
        url=url,
        occurred_at=from_iso(at),
        raw=record,
    )
