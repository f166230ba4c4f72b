"""The interface every channel (outbox, SMTP, SendGrid, Postmark, Mailgun, Twilio) implements.

A channel gets a fully rendered message: content, tracking and unsubscribe headers are done
before it is called. It returns the provider's message id, raises `PermanentSendError` when the
provider refused the message for good (it is recorded as failed and the journey goes on), and
raises anything else for a temporary problem (Temporal retries the send with backoff).
"""

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class OutgoingMessage:
    idempotency_key: str  # pass to the provider where it dedupes: a retry must not send twice
    message_id: uuid.UUID  # ours; providers that carry metadata get it back in webhooks
    channel: str  # "email" | "sms"
    to_address: str
    template: str
    subject: str | None = None  # email only
    html: str | None = None  # email only
    text: str | None = None  # the plain-text part of an email, or the body of an SMS
    # Extra email headers, e.g. List-Unsubscribe and List-Unsubscribe-Post (RFC 8058).
    headers: dict[str, str] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)  # what the content was rendered with


@dataclass(frozen=True)
class DeliveryReceipt:
    provider: str
    provider_message_id: str


class PermanentSendError(Exception):
    """The provider refused the message for good (invalid address, rejected): do not retry."""


class TemporarySendError(Exception):
    """The provider could not take the message now (rate limit, outage): retry with backoff."""


class ChannelSender(Protocol):
    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        """Hand the message to the provider; raise PermanentSendError or any retryable error."""
        ...
