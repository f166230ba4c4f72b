"""Email through Mailgun's Messages API (POST /v3/{domain}/messages, form-encoded).

Mailgun answers 200 with {"id": "<...@domain>", "message": "Queued. Thank you."} and refuses
with a status and {"message": ...}. Our message id travels as the user variable
`v:nurture_message_id`, which Mailgun puts into every webhook's `user-variables`. Tracking is off
(`o:tracking`, and clicks and opens one by one, which outrank the domain's settings): we track.
A retry that does not know whether Mailgun took the message (the worker died during the call)
reads Mailgun's Events API (`accepted` events for the recipient) for our message id.
For EU domains set MAILGUN_BASE_URL=https://api.eu.mailgun.net.
"""

from datetime import datetime

from nurture.channels.base import DeliveryReceipt, LookupUnavailable, OutgoingMessage
from nurture.channels.http import HttpChannel, json_body, require, send_error
from nurture.settings import Settings

_LOOKUP_PAGES = 5


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
        self._events = f"/v3/{domain}/events"
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

    async def find_sent(self, message: OutgoingMessage, since: datetime) -> DeliveryReceipt | None:
        """Mailgun's Events API cannot filter on user variables, but returns them: the
        `accepted` events for this recipient since the first attempt (less a minute for clock
        skew) are read, oldest first, for ours. A few pages at most: one recipient gets few
        messages a minute."""
        params: dict[str, str | int] | None = {
            "event": "accepted",
            "recipient": message.to_address,
            "begin": int(since.timestamp()) - 60,
            "ascending": "yes",
            "limit": 300,
        }
        url = self._events
        for _ in range(_LOOKUP_PAGES):
            answer = json_body(await self._get(url, params=params))
            items = answer.get("items") or []
            for item in items:
                variables = item.get("user-variables") if isinstance(item, dict) else None
                if isinstance(variables, dict) and variables.get("nurture_message_id") == str(
                    message.message_id
                ):
                    headers = (item.get("message") or {}).get("headers") or {}
                    found = headers.get("message-id") if isinstance(headers, dict) else None
                    return DeliveryReceipt(self.provider, str(found or "").strip("<>"))
            next_page = (answer.get("paging") or {}).get("next")
            if not items or not isinstance(next_page, str):
                return None
            url, params = next_page, None  # the next page's URL carries the query
        raise LookupUnavailable(f"mailgun: more than {_LOOKUP_PAGES} pages of events to read")

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
