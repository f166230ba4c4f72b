"""Provider webhooks: verify a request, parse it into `ProviderEvent`s, then `ingest` them.

One module per provider; each refuses a request it cannot authenticate (`Unauthorized`, with
nothing stored) and one it cannot read (`BadRequest`)."""

from __future__ import annotations

from nurture.settings import Settings
from nurture.webhooks import mailgun, postmark, sendgrid, ses, twilio
from nurture.webhooks.base import ProviderEvent, WebhookRequest
from nurture.webhooks.ses import SnsHttp

PROVIDERS = ("sendgrid", "mailgun", "postmark", "ses", "twilio")

__all__ = ["PROVIDERS", "ProviderEvent", "SnsHttp", "WebhookRequest", "receive"]


async def receive(
    provider: str, request: WebhookRequest, settings: Settings, sns: SnsHttp
) -> list[ProviderEvent]:
    """The verified events of a request to /webhooks/{provider} (a known provider)."""
    if provider == "sendgrid":
        return sendgrid.receive(request, settings)
    if provider == "mailgun":
        return mailgun.receive(request, settings)
    if provider == "postmark":
        return postmark.receive(request, settings)
    if provider == "ses":
        return await ses.receive(request, settings, sns)
    if provider == "twilio":
        return twilio.receive(request, settings)
    raise ValueError(f"unknown provider {provider!r}")
