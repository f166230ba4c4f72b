"""Amazon SES events, delivered by SNS.

SNS signs a canonical string of the message's fields with RSA (SignatureVersion 1: SHA1,
2: SHA256). The certificate is fetched from `SigningCertURL`, which is only trusted when it is
HTTPS on a host matching `settings.sns_certificate_hosts` (labels matched one by one, so `*`
never spans a dot). Certificates are cached by URL: SNS rotates them rarely.

A verified SNS message only proves that AWS sent it, not that it comes from our topic: any
AWS account can point a topic at our URL. So subscriptions are confirmed only for topics
listed in `settings.sns_topic_arns`, and when that list is set other topics are refused.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from nurture.errors import BadRequest, Unauthorized, Unavailable
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

PROVIDER = "ses"
logger = logging.getLogger("nurture.webhooks")

# The fields signed, in this order, per message type (Subject only when present).
_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn")
_SIGNED_FIELDS = {
    "Notification": _NOTIFICATION_FIELDS,
    "SubscriptionConfirmation": (*_CONFIRMATION_FIELDS, "Type"),
    "UnsubscribeConfirmation": (*_CONFIRMATION_FIELDS, "Type"),
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
_CACHE_SIZE = 32


class SnsHttp:
    """Fetches signing certificates (cached by URL) and confirms subscriptions.

    Injectable so that tests can trust their own CA; the default makes a short-lived
    client per fetch, since fetches are rare once certificates are cached."""

    def __init__(self, http: httpx.AsyncClient | None = None, timeout: float = 10) -> None:
        self._http = http
        self._timeout = timeout
        self._certificates: dict[str, x509.Certificate] = {}

    async def _get(self, url: str) -> httpx.Response:
        if self._http is not None:
            return await self._http.get(url)
        async with httpx.AsyncClient(timeout=self._timeout) as http:
            return await http.get(url)

    async def certificate(self, url: str) -> x509.Certificate:
        cached = self._certificates.get(url)
        if cached is not None:
            return cached
        try:
            response = await self._get(url)
        except httpx.TransportError as err:
            raise _unreachable(url, err) from err
        if response.status_code >= 500:
            raise _unreachable(url, f"HTTP {response.status_code}")
        try:
            response.raise_for_status()
            certificate = x509.load_pem_x509_certificate(response.content)
        except (httpx.HTTPError, ValueError) as err:
            raise Unauthorized(f"cannot load the SNS signing certificate {url}: {err}") from err
        if len(self._certificates) >= _CACHE_SIZE:
            self._certificates.clear()  # only ever a handful of live URLs: no LRU needed
        self._certificates[url] = certificate
        return certificate

    async def confirm(self, url: str) -> None:
        try:
            response = await self._get(url)
            response.raise_for_status()
        except httpx.HTTPError as err:
            raise _unreachable(url, err) from err


def _unreachable(url: str, why: object) -> Unavailable:
    # 5xx, not 4xx: SNS takes a 4xx as delivered and would never try again.
    return Unavailable(f"SNS at {url} could not be reached ({why}); retry later")


def host_allowed(url: str, patterns: list[str]) -> bool:
    """HTTPS, no credentials in the URL, and a host matching a pattern label by label."""
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.username or parts.password or not parts.hostname:
        return False
    labels = parts.hostname.lower().split(".")
    for pattern in patterns:
        wanted = pattern.lower().split(".")
        if len(wanted) == len(labels) and all(
            fnmatch.fnmatchcase(label, want) for label, want in zip(labels, wanted, strict=True)
        ):
            return True
    return False


def canonical(message: dict[str, Any]) -> bytes:
    fields = _SIGNED_FIELDS[message["Type"]]
    return "".join(
        f"{name}\n{message[name]}\n" for name in fields if message.get(name) is not None
    ).encode()


async def verify(message: dict[str, Any], settings: Settings, sns: SnsHttp) -> None:
    cert_url = str(message["SigningCertURL"])
    if not host_allowed(cert_url, settings.sns_certificate_hosts) or not urlsplit(
        cert_url
    ).path.endswith(".pem"):
        raise Unauthorized(f"SigningCertURL {cert_url} is not an allowed SNS certificate URL")
    algorithm = _HASHES.get(str(message.get("SignatureVersion")))
    if algorithm is None:
        raise Unauthorized(f"unsupported SNS SignatureVersion {message.get('SignatureVersion')}")
    certificate = await sns.certificate(cert_url)
    now = datetime.now(UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise Unauthorized("the SNS signing certificate is expired or not yet valid")
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Unauthorized("the SNS signing certificate does not hold an RSA key")
    try:
        key.verify(
            base64.b64decode(str(message["Signature"]), validate=True),
            canonical(message),
            padding.PKCS1v15(),
            algorithm(),
        )
    except (InvalidSignature, ValueError, binascii.Error) as err:
        raise Unauthorized("SNS signature does not match the message") from err


async def receive(request: WebhookRequest, settings: Settings, sns: SnsHttp) -> list[ProviderEvent]:
    message = require_object(parse_json(request.body), "the SNS body")
    kind = message.get("Type")
    if kind not in _SIGNED_FIELDS:
        raise BadRequest(f"unknown SNS message Type {kind!r}")
    required = ["MessageId", "TopicArn", "Message", "Timestamp", "Signature", "SigningCertURL"]
    if kind != "Notification":
        required += ["SubscribeURL", "Token"]
    missing = [name for name in required if not isinstance(message.get(name), str)]
    if missing:
        raise BadRequest(f"SNS message lacks {', '.join(missing)}")
    await verify(message, settings, sns)
    topic = message["TopicArn"]
    if settings.sns_topic_arns and topic not in settings.sns_topic_arns:
        raise Unauthorized(f"SNS topic {topic} is not in SNS_TOPIC_ARNS")
    if kind == "SubscriptionConfirmation":
        await _confirm(message, settings, sns)
        return []
    if kind == "UnsubscribeConfirmation":
        return []
    event = _event(message)
    return [event] if event is not None else []


async def _confirm(message: dict[str, Any], settings: Settings, sns: SnsHttp) -> None:
    topic = message["TopicArn"]
    if topic not in settings.sns_topic_arns:
        logger.warning(
            "SNS subscription to %s not confirmed: list the topic in SNS_TOPIC_ARNS "
            "(or confirm it by hand in the AWS console)",
            topic,
        )
        return
    # Signed, so from AWS; checked anyway so we never GET a URL of someone else's choosing.
    if not host_allowed(message["SubscribeURL"], settings.sns_certificate_hosts):
        raise Unauthorized("SubscribeURL is not on an allowed SNS host")
    await sns.confirm(message["SubscribeURL"])
    logger.info("confirmed the SNS subscription to %s", topic)


def _event(envelope: dict[str, Any]) -> ProviderEvent | None:
    try:
        ses = json.loads(envelope["Message"])
    except json.JSONDecodeError as err:
        raise BadRequest("the SNS Message is not an SES event (JSON)") from err
    if not isinstance(ses, dict):
        raise BadRequest("the SNS Message is not an SES event (JSON object)")
    # eventType: configuration-set event publishing; notificationType: identity notifications.
    name = ses.get("eventType") or ses.get("notificationType")
    detail: dict[str, Any] = {}
    permanent = False
    url = None
    kind: Kind
    if name == "Delivery":
        kind = "delivered"
        detail = _object(ses, "delivery")
    elif name == "Bounce":
        kind = "bounced"
        detail = _object(ses, "bounce")
        # Transient and Undetermined may succeed later; Permanent means the address is bad.
        permanent = detail.get("bounceType") == "Permanent"
    elif name == "Complaint":
        kind = "complained"
        detail = _object(ses, "complaint")
    elif name == "DeliveryDelay":
        kind = "deferred"
        detail = _object(ses, "deliveryDelay")
    elif name in ("Reject", "Rendering Failure"):
        kind = "failed"
    elif name == "Open":
        kind = "opened"
        detail = _object(ses, "open")
    elif name == "Click":
        kind = "clicked"
        detail = _object(ses, "click")
        url = text(detail.get("link"))
    else:
        return None  # Send, Subscription...
    mail = _object(ses, "mail")
    tags = _object(mail, "tags")
    return ProviderEvent(
        provider=PROVIDER,
        # The SNS MessageId is signed, and SNS keeps it across redeliveries.
        dedupe_key=dedupe_key(PROVIDER, envelope["MessageId"]),
        kind=kind,
        provider_message_id=text(mail.get("messageId")),
        message_id=our_message_id(tags.get(MESSAGE_ID_FIELD)),
        permanent=permanent,
        url=url,
        occurred_at=from_iso(detail.get("timestamp")) or from_iso(envelope.get("Timestamp")),
        raw=ses,
    )


def _object(parent: dict[str, Any], name: str) -> dict[str, Any]:
    value = parent.get(name)
    return value if isinstance(value, dict) else {}
