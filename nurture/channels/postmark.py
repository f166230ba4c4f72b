"""Email through Postmark's Email API (POST /email).

A retry that does not know whether Postmark took the message (the worker died during the call)
asks its Messages API, searching on our message id in `Metadata`.

Postmark answers 200 with {"MessageID", "ErrorCode": 0, ...}, and refuses with an HTTP status
(422 mostly) and {"ErrorCode", "Message"}. Our message id travels in `Metadata`, which Postmark
copies into its webhooks. Open tracking and link tracking are off: we do both ourselves.
"""

from datetime import datetime
from typing import Any

import httpx

from nurture.channels.base import DeliveryReceipt, OutgoingMessage
from nurture.channels.http import HttpChannel, json_body, require, send_error
from nurture.settings import Settings

# Postmark error codes about the recipient: an invalid request (300, e.g. a malformed address)
# or an inactive recipient (406: bounced hard, complained or unsubscribed). Never worth a retry.
PERMANENT_ERROR_CODES = frozenset({300, 406})
# Maintenance and rate limiting: worth waiting for, whatever the status says.
TEMPORARY_ERROR_CODES = frozenset({100, 429})


class PostmarkChannel(HttpChannel):
    provider = "postmark"

    def __init__(self, settings: Settings) -> None:
        token = require(settings.postmark_server_token, "POSTMARK_SERVER_TOKEN")
        super().__init__(
            settings.postmark_base_url,
            settings.provider_timeout_seconds,
            headers={"X-Postmark-Server-Token": token},
        )
        self._from = settings.email_from
        self._reply_to = settings.email_reply_to
        self._stream = settings.postmark_message_stream

    def payload(self, message: OutgoingMessage) -> dict[str, Any]:
        headers = {**message.headers, "X-Nurture-Message-Id": str(message.message_id)}
        body: dict[str, Any] = {
            "From": self._from,
            "To": message.to_address,
            "Subject": message.subject or "",
            "Headers": [{"Name": name, "Value": value} for name, value in headers.items()],
            "TrackOpens": False,
            "TrackLinks": "None",
            "MessageStream": self._stream,
            # Metadata comes back in every webhook. Postmark has no idempotency key on sends;
            # ours rides along so a duplicate can at least be spotted.
            "Metadata": {
                "nurture_message_id": str(message.message_id),
                "nurture_idempotency_key": message.idempotency_key,
            },
        }
        if message.text:
            body["TextBody"] = message.text
        if message.html:
            body["HtmlBody"] = message.html
        if self._reply_to:
            body["ReplyTo"] = self._reply_to
        return body

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        response = await self._post("/email", json=self.payload(message))
        answer = json_body(response)
        error_code = answer.get("ErrorCode")
        if not response.is_success or error_code not in (None, 0):
            raise send_error(self.provider, response, permanent=_permanent(response, error_code))
        return DeliveryReceipt(
            provider=self.provider,
            provider_message_id=self._receipt_id(answer.get("MessageID"), "MessageID"),
        )

    async def find_sent(self, message: OutgoingMessage, since: datetime) -> DeliveryReceipt | None:
        """Postmark's outbound message search filters on one metadata field
        (`metadata_<name>=<value>`): ours names the message. (`since` is not needed: our
        message id is unique.)"""
        response = await self._get(
            "/messages/outbound",
            params={
                "count": 1,
                "offset": 0,
                "recipient": message.to_address,
                "metadata_nurture_message_id": str(message.message_id),
            },
        )
        for found in json_body(response).get("Messages") or []:
            if isinstance(found, dict) and isinstance(found.get("MessageID"), str):
                return DeliveryReceipt(self.provider, found["MessageID"])
        return None


def _permanent(response: httpx.Response, error_code: object) -> bool | None:
    """Postmark's error code decides when it is one we know; otherwise the HTTP status does
    (None), except that a 200 carrying an error code is a refusal by Postmark's own word."""
    if error_code in PERMANENT_ERROR_CODES:
        return True
    if error_code in TEMPORARY_ERROR_CODES:
        return False
    return True if response.is_success else None
