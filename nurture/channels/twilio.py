"""SMS through Twilio's Programmable Messaging API
(POST /2010-04-01/Accounts/{AccountSid}/Messages.json, form-encoded, basic auth sid:token).

Twilio answers 201 with the Message resource, whose `sid` (SM...) its status callbacks carry;
it refuses with a status and {"code", "message", "more_info", "status"}. The sender is the
Messaging Service when one is configured (Twilio then picks a number from its pool), else the
From number. A retry that does not know whether Twilio took the message (the worker died
during the call) reads the newest messages to the number for ours (see `find_sent`).
"""

from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

from nurture.channels.base import DeliveryReceipt, OutgoingMessage, PermanentSendError
from nurture.channels.http import HttpChannel, json_body, require, send_error
from nurture.settings import Settings

# Twilio error codes that are about the recipient, so no retry can fix them.
# https://www.twilio.com/docs/api/errors
PERMANENT_ERROR_CODES = frozenset(
    {
        21211,  # invalid 'To' phone number
        21214,  # 'To' phone number cannot be reached
        21217,  # phone number does not appear to be valid
        21408,  # sending to this region is not enabled
        21610,  # the recipient replied STOP: unsubscribed
        21612,  # no route between the sender and this number
        21614,  # 'To' is not a mobile number
    }
)


class TwilioChannel(HttpChannel):
    provider = "twilio"

    def __init__(self, settings: Settings) -> None:
        account_sid = require(settings.twilio_account_sid, "TWILIO_ACCOUNT_SID")
        token = require(settings.twilio_auth_token, "TWILIO_AUTH_TOKEN")
        if settings.twilio_messaging_service_sid:
            self._sender = {"MessagingServiceSid": settings.twilio_messaging_service_sid}
        else:
            self._sender = {
                "From": require(
                    settings.twilio_from_number,
                    "TWILIO_FROM_NUMBER (or TWILIO_MESSAGING_SERVICE_SID)",
                )
            }
        super().__init__(
            settings.twilio_base_url,
            settings.provider_timeout_seconds,
            auth=(account_sid, token),
        )
        self._path = f"/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._callback = f"{settings.public_base_url.rstrip('/')}/v1/webhooks/twilio"

    async def find_sent(self, message: OutgoingMessage, since: datetime) -> DeliveryReceipt | None:
        """Twilio keeps no metadata of ours on a Message, and its list filters on To, From and
        the day sent only: the newest messages to this number are read for one with our body,
        created since the first attempt (less a minute for clock skew). Same recipient, same
        text, same minute: ours, or one the contact could not tell from ours."""
        response = await self._get(self._path, params={"To": message.to_address, "PageSize": 50})
        earliest = since - timedelta(minutes=1)
        for found in json_body(response).get("messages") or []:
            if not isinstance(found, dict) or found.get("body") != message.text:
                continue
            try:
                created = parsedate_to_datetime(str(found.get("date_created")))
            except (TypeError, ValueError):
                continue
            if created >= earliest and isinstance(found.get("sid"), str):
                return DeliveryReceipt(self.provider, found["sid"])
        return None

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        if not message.text:
            raise PermanentSendError("an SMS needs a text body; this message has none")
        response = await self._post(
            self._path,
            data={
                "To": message.to_address,
                "Body": message.text,
                # Delivery reports come back to our webhook, naming our message.
                "StatusCallback": self._callback,
                **self._sender,
            },
            # Twilio's idempotency token: a retry of this send carries the same key. (Twilio
            # documents the header on the requests it sends us; whether Messages.json dedupes
            # on it is Twilio's call, and sending it costs nothing.)
            headers={"I-Twilio-Idempotency-Token": message.idempotency_key},
        )
        answer = json_body(response)
        if not response.is_success:
            permanent = True if answer.get("code") in PERMANENT_ERROR_CODES else None
            raise send_error(self.provider, response, permanent=permanent)
        return DeliveryReceipt(
            provider=self.provider, provider_message_id=self._receipt_id(answer.get("sid"), "sid")
        )
