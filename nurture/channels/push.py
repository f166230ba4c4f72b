"""Push notifications: what a push provider raises for a token that no longer works.

A push goes to every device token of a contact (`device_tokens`), one provider call per
token; the development outbox takes them like email and SMS. A token the provider says is
unregistered or invalid is removed from the contact (`nurture.audience.devices`)."""

from nurture.channels.base import PermanentSendError


class InvalidDeviceToken(PermanentSendError):
    """The provider says this token is unregistered or invalid: remove it from the contact."""
