"""The channels the settings ask for: {"email": ..., "sms": ...}, built once per worker.

A provider chosen without its credentials is a startup error naming every missing setting,
rather than a send that fails (and retries) for each message later on.
"""

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from pydantic import SecretStr

from nurture.channels.base import ChannelSender
from nurture.channels.mailgun import MailgunChannel
from nurture.channels.outbox import OutboxChannel
from nurture.channels.postmark import PostmarkChannel
from nurture.channels.sendgrid import SendGridChannel
from nurture.channels.smtp import SmtpChannel
from nurture.channels.twilio import TwilioChannel
from nurture.db.engine import SessionFactory
from nurture.settings import Settings

# The settings each provider cannot work without (field names; the error shows them as the
# environment variables people set).
_REQUIRED: dict[str, tuple[str, ...]] = {
    "sendgrid": ("sendgrid_api_key",),
    "postmark": ("postmark_server_token",),
    "mailgun": ("mailgun_api_key", "mailgun_domain"),
    "twilio": ("twilio_account_sid", "twilio_auth_token"),
}


@runtime_checkable
class _Closable(Protocol):
    async def aclose(self) -> None: ...


def _is_blank(value: object) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value is None or (isinstance(value, str) and not value.strip())


def missing_settings(settings: Settings, provider: str) -> list[str]:
    """The environment variables `provider` still needs, in the order they are documented."""
    missing = [
        name.upper() for name in _REQUIRED.get(provider, ()) if _is_blank(getattr(settings, name))
    ]
    if (
        provider == "twilio"
        and _is_blank(settings.twilio_from_number)
        and _is_blank(settings.twilio_messaging_service_sid)
    ):
        missing.append("TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID")
    if provider == "smtp" and settings.smtp_username and _is_blank(settings.smtp_password):
        missing.append("SMTP_PASSWORD (SMTP_USERNAME is set)")
    return missing


def _check(settings: Settings, variable: str, provider: str) -> None:
    missing = missing_settings(settings, provider)
    if missing:
        raise ValueError(f"{variable}={provider} needs {', '.join(missing)}")


def channels_from_settings(
    settings: Settings, sessions: SessionFactory
) -> dict[str, ChannelSender]:
    """One sender per channel, as EMAIL_CHANNEL and SMS_CHANNEL say (outbox by default).

    Raises ValueError when a chosen provider lacks credentials. Close the result with
    `close_channels` when the worker stops."""
    _check(settings, "EMAIL_CHANNEL", settings.email_channel)
    _check(settings, "SMS_CHANNEL", settings.sms_channel)
    outbox = OutboxChannel(sessions)

    email: ChannelSender
    match settings.email_channel:
        case "outbox":
            email = outbox
        case "smtp":
            email = SmtpChannel(settings)
        case "sendgrid":
            email = SendGridChannel(settings)
        case "postmark":
            email = PostmarkChannel(settings)
        case "mailgun":
            email = MailgunChannel(settings)

    sms: ChannelSender
    match settings.sms_channel:
        case "outbox":
            sms = outbox
        case "twilio":
            sms = TwilioChannel(settings)

    push: ChannelSender = outbox
    if settings.push_channel == "fcm":
        from nurture.channels.fcm import FcmChannel

        push = FcmChannel.from_settings(settings)

    return {"email": email, "sms": sms, "push": push}


async def close_channels(channels: Mapping[str, ChannelSender] | Iterable[ChannelSender]) -> None:
    """Close the connection pools of the channels that hold one (each channel once)."""
    senders = channels.values() if isinstance(channels, Mapping) else channels
    seen: set[int] = set()
    for sender in senders:
        if id(sender) in seen:
            continue
        seen.add(id(sender))
        if isinstance(sender, _Closable):
            await sender.aclose()
