"""Delivery channels: one interface, one implementation per provider."""

from nurture.channels.base import (
    ChannelSender,
    DeliveryReceipt,
    OutgoingMessage,
    PermanentSendError,
    TemporarySendError,
)

__all__ = [
    "ChannelSender",
    "DeliveryReceipt",
    "OutgoingMessage",
    "PermanentSendError",
    "TemporarySendError",
]
