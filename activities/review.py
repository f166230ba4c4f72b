"""The weekly review email: counted, rendered and sent to each recipient by the channel."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from temporalio import activity

from nurture.analytics.review import ReviewRun, recipients, review_email, weekly_review
from nurture.channels.base import ChannelSender, OutgoingMessage
from nurture.db.engine import SessionFactory
from nurture.settings import Settings


class ReviewActivities:
    def __init__(
        self, sessions: SessionFactory, channels: Mapping[str, ChannelSender], settings: Settings
    ) -> None:
        self._sessions = sessions
        self._channels = channels
        self._settings = settings

    @activity.defn
    async def send_weekly_review(self, run: ReviewRun) -> int:
        """Send the review to REVIEW_RECIPIENTS and to journey owners; returns how many got it.
        Each email's idempotency key is (week, recipient): a retried activity hands the channel
        the same keys (the outbox and providers that dedupe send each once)."""
        async with self._sessions() as session:
            review = await weekly_review(session, run.at)
        sender = self._channels.get("email")
        if sender is None:
            activity.logger.warning("weekly review not sent: no email channel")
            return 0
        sent = 0
        for address, journeys in sorted(
            recipients(review, self._settings.review_recipients).items()
        ):
            if not journeys:
                continue
            subject, html, text = review_email(review, journeys)
            key = f"weekly-review:{run.at:%Y-%m-%d}:{address}"
            await sender.send(
                OutgoingMessage(
                    idempotency_key=key,
                    message_id=uuid.uuid5(uuid.NAMESPACE_URL, key),
                    channel="email",
                    to_address=address,
                    template="weekly-review",
                    subject=subject,
                    html=html,
                    text=text,
                )
            )
            sent += 1
        return sent
