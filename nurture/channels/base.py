"""The interface every channel (outbox, SMTP, SendGrid, Postmark, Mailgun, Twilio) implements.

A channel gets a fully rendered message: content, tracking and unsubscribe headers are done
before it is called. It returns the provider's message id, raises `PermanentSendError` when the
provider refused the message for good (it is recorded as failed and the journey goes on), and
raises anything else for a temporary problem (Temporal retries the send with backoff).
"""

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


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
    """The provider could not take the message now (rate limit, outage): retry with backoff.

    `maybe_accepted` is True when the request went out and no answer came back (a timeout or a
    connection lost after sending): the provider may have the message, so the retry must find
    out before sending again. False when the provider answered "no" or was never reached."""

    def __init__(self, message: str, *, maybe_accepted: bool = False) -> None:
        super().__init__(message)
        self.maybe_accepted = maybe_accepted


class LookupUnavailable(Exception):
    """The provider cannot say whether it has a message (the lookup API is not part of the
    account's plan, or refuses our key): the uncertain send follows UNCERTAIN_SENDS."""


class ChannelSender(Protocol):
    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        """Hand the message to the provider; raise PermanentSendError or any retryable error."""
        ...


@runtime_checkable
class DedupingChannel(Protocol):
    """A channel whose provider dedupes on our idempotency key: sending again is safe."""

    dedupes_on_key: bool


@runtime_checkable
class SentLookup(Protocol):
    """A channel whose provider can be asked whether it accepted one of our messages."""

    async def find_sent(self, message: OutgoingMessage, since: datetime) -> DeliveryReceipt | None:
        """The receipt of `message` if the provider accepted it (at or after `since`), None if
        it did not; LookupUnavailable when it cannot tell, anything else to retry later."""
        ...
