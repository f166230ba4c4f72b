"""Mailgun webhooks (the JSON kind: `{"signature": {...}, "event-data": {...}}`).

Mailgun's signature is HMAC-SHA256(signing key, timestamp + token), hex: it covers the
timestamp and a random token but NOT the event data. So a signature block seen once could be
glued to forged event data. Two defences, as Mailgun recommends: the timestamp must be recent,
and a token is honoured once. The token is therefore the dedupe key: a replayed token is a
duplicate whatever event data comes with it (Mailgun retries resend the same block).

Every verified token is recorded, also for events we do not act on (accepted, stored...): as
an `ignored` event, so that its signature block cannot be glued to forged data later either.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from nurture.errors import Unauthorized
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
    require_object,
    text,
)

PROVIDER = "mailgun"
# How far the signed timestamp may be from our clock, either way.
MAX_AGE_SECONDS = 300

# Permanent failures because the address is on Mailgun's own suppression lists.
_SUPPRESSED_REASONS: dict[str, Kind] = {
    "suppress-unsubscribe": "unsubscribed",
    "suppress-complaint": "complained",
}


def receive(
    request: WebhookRequest, settings: Settings, now: float | None = None
) -> list[ProviderEvent]:
    # The signature lives in the body, so the body must be read first; it is not trusted
    # until the signature checks out.
    payload = require_object(parse_json(request.body), "the Mailgun body")
    signature = payload.get("signature")
    if not isinstance(signature, dict):
        raise Unauthorized("missing Mailgun signature block")
    # Its shape is checked before the signature, so that every request that verifies has its
    # token recorded below (a 400 after verifying would leave the token usable).
    data = require_object(payload.get("event-data"), "event-data")
    token = verify(signature, settings, time.time() if now is None else now)
    return [_event(data, token)]


def verify(signature: dict[str, Any], settings: Settings, now: float) -> str:
    """Check the signature block; returns the token (what makes this delivery unique)."""
    if settings.mailgun_webhook_signing_key is None:
        raise Unauthorized("Mailgun webhooks are not configured: set MAILGUN_WEBHOOK_SIGNING_KEY")
    timestamp, token, given = (
        text(signature.get(name)) for name in ("timestamp", "token", "signature")
    )
    if timestamp is None or token is None or given is None:
        raise Unauthorized("Mailgun signature block lacks timestamp, token or signature")
    expected = hmac.new(
        settings.mailgun_webhook_signing_key.get_secret_value().encode(),
        (timestamp + token).encode(),
        hashlib.sha256,
    ).hexdigest()
    # As bytes: compare_digest refuses a str with non-ASCII characters (TypeError, a 500).
    if not hmac.compare_digest(expected.encode(), given.lower().encode()):
        raise Unauthorized("Mailgun signature does not match")
    # Checked after the HMAC, so the message only says "stale" for a genuine signature.
    try:
        age = abs(now - float(timestamp))
    except ValueError as err:
        raise Unauthorized("Mailgun timestamp is not a number") from err
    if age > MAX_AGE_SECONDS:
        raise Unauthorized(
            f"Mailgun timestamp is {int(age)} s away from now (at most {MAX_AGE_SECONDS} s)"
        )
    return token


def _event(data: dict[str, Any], token: str) -> ProviderEvent:
    name = data.get("event")
    permanent = False
    kind: Kind
    if name == "delivered":
        kind = "delivered"
    elif name == "failed":
        reason = str(data.get("reason") or "")
        if data.get("severity") != "permanent":
            kind = "deferred"  # Mailgun retries temporary failures itself
        elif reason in _SUPPRESSED_REASONS:
            kind = _SUPPRESSED_REASONS[reason]
        elif reason == "old":
            kind = "failed"  # gave up after retrying for hours: not proof the address is bad
        else:
            kind, permanent = "bounced", True
    elif name == "opened":
        kind = "opened"
    elif name == "clicked":
        kind = "clicked"
    elif name == "complained":
        kind = "complained"
    elif name == "unsubscribed":
        kind = "unsubscribed"
    else:  # accepted, stored, list events...: only the token is kept (see the top)
        return ProviderEvent(
            provider=PROVIDER,
            dedupe_key=dedupe_key(PROVIDER, token),
            kind="ignored",
            provider_message_id=None,
            occurred_at=from_unix(data.get("timestamp")),
            raw={"event": text(name)},
        )
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    header_id = text(headers.get("message-id")) if isinstance(headers, dict) else None
    variables = data.get("user-variables")
    return ProviderEvent(
        provider=PROVIDER,
        dedupe_key=dedupe_key(PROVIDER, token),
        kind=kind,
        # The send API answers "<id@domain>"; the header here comes without brackets.
        provider_message_id=header_id.strip("<>") if header_id else None,
        message_id=our_message_id(variables.get(MESSAGE_ID_FIELD))
        if isinstance(variables, dict)
        else None,
        permanent=permanent,
        url=text(data.get("url")) if kind == "clicked" else None,
        occurred_at=from_unix(data.get("timestamp")),
        raw=data,
    )
