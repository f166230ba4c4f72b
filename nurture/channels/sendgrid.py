"""Email through SendGrid's v3 Mail Send API (POST /v3/mail/send).

SendGrid answers 202 with the message's id in the `X-Message-Id` header. Our message id travels
in `custom_args`, which SendGrid copies into every event webhook, so events map back to the
message without a lookup by provider id. SendGrid's own click, open and subscription tracking
are switched off: links and the open pixel are already ours, and so is List-Unsubscribe.
"""

from email.utils import parseaddr
from typing import Any

from nurture.channels.base import DeliveryReceipt, OutgoingMessage
from nurture.channels.http import HttpChannel, require, send_error
from nurture.settings import Settings


def _address(value: str) -> dict[str, str]:
    """SendGrid wants {"email", "name"} objects, not "Name <address>" strings."""
    name, email = parseaddr(value)
    return {"email": email or value, "name": name} if name else {"email": email or value}


class SendGridChannel(HttpChannel):
    provider = "sendgrid"

    def __init__(self, settings: Settings) -> None:
        api_key = require(settings.sendgrid_api_key, "SENDGRID_API_KEY")
        super().__init__(
            settings.sendgrid_base_url,
            settings.provider_timeout_seconds,
            headers={"Authorization": f"Bearer {api_key}"},
        )
        self._from = _address(settings.email_from)
        self._reply_to = _address(settings.email_reply_to) if settings.email_reply_to else None

    def payload(self, message: OutgoingMessage) -> dict[str, Any]:
        # SendGrid requires text/plain before text/html when both are given.
        content = [
            {"type": kind, "value": value}
            for kind, value in (("text/plain", message.text), ("text/html", message.html))
            if value
        ]
        body: dict[str, Any] = {
            "personalizations": [
                {
                    "to": [{"email": message.to_address}],
                    # Custom args come back in every event webhook. SendGrid has no idempotency
                    # key on Mail Send; ours rides along so a duplicate can at least be spotted.
                    "custom_args": {
                        "nurture_message_id": str(message.message_id),
                        "nurture_idempotency_key": message.idempotency_key,
                    },
                }
            ],
            "from": self._from,
            "subject": message.subject or "",
            "content": content,
            "headers": {**message.headers, "X-Nurture-Message-Id": str(message.message_id)},
            "tracking_settings": {
                "click_tracking": {"enable": False, "enable_text": False},
                "open_tracking": {"enable": False},
                "subscription_tracking": {"enable": False},
            },
        }
        if self._reply_to:
            body["reply_to"] = self._reply_to
        return body

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        response = await self._post("/v3/mail/send", json=self.payload(message))
        if not response.is_success:
            raise send_error(self.provider, response)
        return DeliveryReceipt(
            provider=self.provider,
            provider_message_id=self._receipt_id(
                response.headers.get("X-Message-Id"), "X-Message-Id header"
            ),
        )
