"""Delivery channels: one interface, one implementation per provider."""

from nurture.channels.base import (
    ChannelSender,
    DeliveryReceipt,
    OutgoingMessage,
    PermanentSendError,
)

__all__ = ["ChannelSender", "DeliveryReceipt", "OutgoingMessage", "PermanentSendError"]
