"""What every provider module produces: verified `ProviderEvent`s, in one vocabulary.

Each provider speaks its own dialect (SendGrid "spamreport", Postmark "SpamComplaint", SES
"Complaint"...). Providers translate into `Kind` here so that storing and acting on an event
(`nurture.webhooks.ingest`) never needs to know who sent it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from nurture.errors import BadRequest
from nurture.nesting import unstorable

Kind = Literal[
    "delivered",
    "bounced",
    "deferred",
    "complained",
    "unsubscribed",
    "opened",
    "clicked",
    "failed",
    # A verified delivery we do not act on, stored only so that its dedupe key is taken
    # (Mailgun signs a token, not the event: an unrecorded token could be replayed).
    "ignored",
]
KINDS: frozenset[str] = frozenset(get_args(Kind))

# Metadata we attach to every send (SendGrid custom_args, Mailgun v: variables, Postmark
# Metadata, SES tags); providers echo it back, so an event maps to our row without a lookup
# by the provider's id.
MESSAGE_ID_FIELD = "nurture_message_id"

# webhook_events.dedupe_key is VARCHAR(255); composite keys (a link, a timestamp...) are
# hashed rather than truncated, since two truncated keys could collide.
_MAX_KEY = 200


@dataclass(frozen=True)
class ProviderEvent:
    """One verified provider callback about one message."""

    provider: str
    # Unique across providers (prefixed by the provider): a redelivery has the same key.
    dedupe_key: str
    kind: Kind
    provider_message_id: str | None
    # Our `messages.id` when the provider echoed the metadata we sent with the message.
    message_id: uuid.UUID | None = None
    # For bounces: a hard bounce (the address does not exist) as opposed to a soft one.
    permanent: bool = False
    url: str | None = None  # for clicks
    # An open by a mail proxy or prefetcher, not a person (SendGrid reports it).
    machine: bool = False
    occurred_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WebhookRequest:
    """The parts of an HTTP request that providers sign, free of any web framework."""

    body: bytes
    headers: Mapping[str, str]  # names lower-cased
    path: str
    query: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def dedupe_key(provider: str, *parts: object) -> str:
    """`provider:part:part...`, or `provider:sha256:<hex>` when that would be too long."""
    joined = ":".join(str(part) for part in parts)
    key = f"{provider}:{joined}"
    if len(key) <= _MAX_KEY:
        return key
    return f"{provider}:sha256:{hashlib.sha256(joined.encode()).hexdigest()}"


def parse_json(body: bytes) -> Any:
    """The body as JSON that can be stored (no NUL, unpaired surrogate or NaN: PostgreSQL
    refuses them; `nurture.nesting.unstorable`)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise BadRequest(f"body is not JSON: {err}") from err
    if (problem := unstorable(data, "body")) is not None:
        raise BadRequest(f"{problem[0]}: {problem[1]}")
    return data


def require_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} is not a JSON object")
    return value


def text(value: Any) -> str | None:
    """A non-empty string, or None (providers send "" and null interchangeably)."""
    if value is None or value == "":
        return None
    return str(value)


def our_message_id(value: Any) -> uuid.UUID | None:
    """Our message id from echoed metadata; anything that is not a UUID is ignored rather
    than refused, since a malformed echo must not cost us the rest of the event."""
    if isinstance(value, list):  # SES tags and some form encodings carry a list
        value = value[0] if value else None
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def from_unix(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def from_iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
