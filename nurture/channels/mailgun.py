"""Email through Mailgun's Messages API (POST /v3/{domain}/messages, form-encoded).

Mailgun answers 200 with {"id": "<...@domain>", "message": "Queued. Thank you."} and refuses
with a status and {"message": ...}. Our message id travels as the user variable
`v:nurture_message_id`, which Mailgun puts into every webhook's `user-variables`. Tracking is off
(`o:tracking`, and clicks and opens one by one, which outrank the domain's settings): we track.
For EU domains set MAILGUN_BASE_URL=https://api.eu.mailgun.net.
"""

from nurture.channels.base import DeliveryReceipt, OutgoingMessage
from nurture.channels.http import HttpChannel, json_body, require, send_error
from nurture.settings import Settings


class MailgunChannel(HttpChannel):
    provider = "mailgun"

    def __init__(self, settings: Settings) -> None:
        api_key = require(settings.mailgun_api_key, "MAILGUN_API_KEY")
        domain = require(settings.mailgun_domain, "MAILGUN_DOMAIN")
        super().__init__(
            settings.mailgun_base_url,
            settings.provider_timeout_seconds,
            auth=("api", api_key),
        )
        self._path = f"/v3/{domain}/messages"
        self._from = settings.email_from
        self._reply_to = settings.email_reply_to

    def form(self, message: OutgoingMessage) -> dict[str, str]:
        fields = {
            "from": self._from,
            "to": message.to_address,
            "subject": message.subject or "",
            "o:tracking": "no",
            "o:tracking-clicks": "no",
            "o:tracking-opens": "no",
            # User variables come back in every webhook. Mailgun has no idempotency key on
            # sends; ours rides along so a duplicate can at least be spotted. Mailgun also puts
            # them in an X-Mailgun-Variables header the recipient can see: ids only, nothing
            # personal.
            "v:nurture_message_id": str(message.message_id),
            "v:nurture_idempotency_key": message.idempotency_key,
            "h:X-Nurture-Message-Id": str(message.message_id),
        }
        if message.text:
            fields["text"] = message.text
        if message.html:
            fields["html"] = message.html
        if self._reply_to:
            fields["h:Reply-To"] = self._reply_to
        fields.update({f"h:{name}": value for name, value in message.headers.items()})
        return fields

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        response = await self._post(self._path, data=self.form(message))
        if not response.is_success:
            raise send_error(self.provider, response)
        message_id = json_body(response).get("id")
        if isinstance(message_id, str):
            message_id = message_id.strip("<>")
        return DeliveryReceipt(
            provider=self.provider, provider_message_id=self._receipt_id(message_id, "id")
        )
