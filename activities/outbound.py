"""The webhook step's activity: one signed call to a checked destination.

Its result is what the response gave (the fields to save); the workflow saves them through
`update_contact`, the one change path, like any other step's change. Retries are the
workflow's (the step's `retries`, with backoff): this raises a retryable error for a 5xx or a
timeout and a final one (`WebhookRefused`) for a 4xx or a refused destination.
"""

from __future__ import annotations

import hashlib
import hmac

from temporalio import activity
from temporalio.exceptions import ApplicationError

from nurture.content.rendering import TemplateRenderError, message_context
from nurture.contracts import WebhookCall, WebhookResult
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact
from nurture.outbound.guard import Allowlist
from nurture.outbound.webhooks import WebhookRefused, WebhookUnavailable, call_webhook
from nurture.settings import Settings

WEBHOOK_REFUSED = "WebhookRefused"


def webhook_secret(settings: Settings) -> bytes:
    """The signing key: WEBHOOK_SIGNING_SECRET, or one derived from SECRET_KEY (so that the
    webhook key can be handed to a receiver without handing over the key that signs links)."""
    if settings.webhook_signing_secret is not None:
        return settings.webhook_signing_secret.get_secret_value().encode()
    return (
        hmac.new(
            settings.secret_key.get_secret_value().encode(), b"nurture-webhook-v1", hashlib.sha256
        )
        .hexdigest()
        .encode()
    )


class OutboundActivities:
    def __init__(self, sessions: SessionFactory, settings: Settings) -> None:
        self._sessions = sessions
        self._secret = webhook_secret(settings)
        self._allowlist = Allowlist.parse(settings.outbound_allowlist)

    @activity.defn
    async def call_webhook(self, call: WebhookCall) -> WebhookResult:
        async with self._sessions() as session:
            contact = await session.get(Contact, call.contact_id)
        if contact is None:
            return WebhookResult(skipped="contact_deleted")
        context = message_context(
            contact, message_id=call.idempotency_key, journey=call.journey_key
        )
        try:
            response = await call_webhook(
                call.webhook,
                context,
                template_key=f"{call.journey_key}.{call.step}",
                idempotency_key=call.idempotency_key,
                secret=self._secret,
                allowlist=self._allowlist,
            )
        except (WebhookRefused, TemplateRenderError) as err:
            raise ApplicationError(
                str(err)[:250], type=WEBHOOK_REFUSED, non_retryable=True
            ) from err
        except WebhookUnavailable as err:
            raise ApplicationError(str(err)[:250], type="WebhookUnavailable") from err
        saved = {name: value for name, value in response.saved.items() if value is not None}
        return WebhookResult(status=response.status, saved=saved)
