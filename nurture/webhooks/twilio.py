"""Twilio SMS status callbacks (form-encoded), signed with X-Twilio-Signature.

The signature is base64 HMAC-SHA1(auth token, URL + each POST parameter as name+value,
sorted by name). The URL is the one Twilio called, which is our public URL: behind a proxy
or load balancer the Host header and scheme we see are not that, so it is rebuilt from
`settings.public_base_url`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qsl

from nurture.errors import BadRequest, Unauthorized
from nurture.settings import Settings
from nurture.webhooks.base import (
    MESSAGE_ID_FIELD,
    Kind,
    ProviderEvent,
    WebhookRequest,
    dedupe_key,
    our_message_id,
    text,
)

PROVIDER = "twilio"
SIGNATURE_HEADER = "X-Twilio-Signature"

# Error codes of an undelivered/failed message that say the number will never take SMS from
# us: 21610 the recipient replied STOP; the others: not a valid or not a mobile number.
_UNSUBSCRIBED_CODES = {"21610"}
_PERMANENT_CODES = {"21211", "21614", "30005", "30006"}


def signed_url(request: WebhookRequest, settings: Settings) -> str:
    url = settings.public_base_url.rstrip("/") + request.path
    return f"{url}?{request.query}" if request.query else url


def signature(url: str, params: list[tuple[str, str]], auth_token: str) -> str:
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def receive(request: WebhookRequest, settings: Settings) -> list[ProviderEvent]:
    if settings.twilio_auth_token is None:
        raise Unauthorized("Twilio webhooks are not configured: set TWILIO_AUTH_TOKEN")
    try:
        params = parse_qsl(request.body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as err:
        raise BadRequest("body is not form-encoded text") from err
    given = request.header(SIGNATURE_HEADER)
    if not given:
        raise Unauthorized(f"missing {SIGNATURE_HEADER} header")
    expected = signature(
        signed_url(request, settings), params, settings.twilio_auth_token.get_secret_value()
    )
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise Unauthorized(
            "Twilio signature does not match (the URL signed is PUBLIC_BASE_URL + path: "
            "check it is the URL configured at Twilio)"
        )
    form = dict(params)
    sid = text(form.get("MessageSid")) or text(form.get("SmsSid"))
    status = text(form.get("MessageStatus")) or text(form.get("SmsStatus"))
    if sid is None or status is None:
        raise BadRequest("a Twilio status callback needs MessageSid and MessageStatus")
    kind: Kind
    permanent = False
    code = text(form.get("ErrorCode"))
    if status == "delivered":
        kind = "delivered"
    elif status in ("undelivered", "failed"):
        if code in _UNSUBSCRIBED_CODES:
            kind = "unsubscribed"
        elif code in _PERMANENT_CODES:
            kind, permanent = "bounced", True
        else:
            kind = "failed"
    else:
        return []  # queued, sending, sent...: steps on the way, nothing to record
    return [
        ProviderEvent(
            provider=PROVIDER,
            dedupe_key=dedupe_key(PROVIDER, sid, status),
            kind=kind,
            provider_message_id=sid,
            # Only if the lead's sender appends it to the StatusCallback URL's query.
            message_id=our_message_id(dict(parse_qsl(request.query)).get(MESSAGE_ID_FIELD)),
            permanent=permanent,
            raw=form,
        )
    ]
