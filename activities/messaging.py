"""The send activity: one message per idempotency key, whatever the retries.

The message row is claimed first (UNIQUE idempotency key) and marked `attempting` in the same
committed transaction, just before the provider call; the provider's answer is committed at
once after it. So a retry knows where the last attempt stopped:

- `sent`, `skipped`, `failed`, `unknown`: finished, the recorded result is returned;
- `sending`: no provider call happened (or the provider said no): send;
- `attempting`: the provider may have the message (the worker died, or the call timed out after
  the request went out). The channel decides: the outbox dedupes on the key (send again);
  Postmark, Mailgun and Twilio are asked whether they have it (`find_sent`): if so it is
  recorded as sent, if not it is sent; SMTP and SendGrid cannot be asked, and UNCERTAIN_SENDS
  says what happens: `unknown` (recorded, never sent twice) or `resend`.

The common send takes a lean path (`_claim_lean`): a new message, to a contact and enrollment
that exist, that no rule holds, counts or records. One statement writes the path and reads
what the send is decided on; the message is rendered; one statement inserts its row already
`attempting` (or `skipped`), with its claim on the frequency caps. An attempt that finds a row,
or that a rule applies to, takes the locking path below (`_claim`).

Before a new send is claimed, the send rules decide in the same transaction
(`nurture.sending.gate`): a send held by quiet hours or delayed by a frequency cap returns
"held" with the instant to try again, and leaves no message row; one skipped by a rule is a
skipped message with the rule as its reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime

import asyncpg
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from temporalio import activity
from temporalio.client import Client

from activities.message_rows import (
    NEW_MESSAGE,
    SEND_FACTS,
    SENT,
    claim_message,
    claimed_message,
    finish_message,
)
from activities.path_rows import progress_arguments, record_progress
from nurture.audience.suppressions import suppression_reason
from nurture.channels.base import (
    ChannelSender,
    DedupingChannel,
    LookupUnavailable,
    OutgoingMessage,
    PermanentSendError,
    SentLookup,
    TemporarySendError,
)
from nurture.content.isolation import render_isolated
from nurture.content.loading import TemplateNotFound, load_template
from nurture.content.rendering import TemplateContent, TemplateRenderError, message_context
from nurture.contracts import SendRequest, SendResult
from nurture.db.engine import SessionFactory
from nurture.db.lean import autocommit, driver_connection
from nurture.db.models import Contact, Enrollment, Message, MessageStatus, utcnow
from nurture.db.rows import ContactLike, ContactRow
from nurture.journeys.enrollments import EnrollmentOptions
from nurture.journeys.exclusion import MissingExclusionSegment, in_exclusion_segment
from nurture.sending.gate import goes_unchecked, meet_send_rules
from nurture.sending.rules import SendRules
from nurture.settings import Settings
from nurture.tracking import Tracker
from nurture.webhooks.ingest import match_pending

# What to send (`_claim`): the message, whether an earlier attempt may have reached the
# provider, and since when it has been attempting.
_Claimed = tuple[OutgoingMessage, bool, datetime]

_FINISHED = {
    MessageStatus.SENT,
    MessageStatus.SKIPPED,
    MessageStatus.FAILED,
    MessageStatus.UNKNOWN,
}


def skip_reason(contact: ContactLike | None, channel: str) -> str | None:
    """Why a message must not reach a provider, or None when it may."""
    if contact is None:
        return "contact_deleted"
    if channel == "email" and not contact.email:
        return "no_email_address"
    if channel == "sms" and not contact.phone:
        return "no_phone_number"
    if contact.consent.get(channel) == "revoked":
        return f"{channel}_consent_revoked"
    return None


class MessagingActivities:
    def __init__(
        self,
        sessions: SessionFactory,
        channels: Mapping[str, ChannelSender],
        settings: Settings,
        client: Client | None = None,
        options: EnrollmentOptions | None = None,
    ) -> None:
        self._sessions = sessions
        self._channels = channels
        self._settings = settings
        self._client = client  # to act on webhooks that arrived before the send was recorded
        self._options = options  # to start journeys a webhook's open or click qualifies for
        self._tracker = Tracker(settings.public_base_url, settings.secret_key.get_secret_value())

    @activity.defn
    async def send_message(self, request: SendRequest) -> SendResult:
        channel = self._channels.get(request.channel)
        claimed = await self._claim_lean(request, channel)
        if claimed is None:
            claimed = await self._claim(request, channel)
        if isinstance(claimed, SendResult):
            return claimed
        assert channel is not None
        outgoing, uncertain, since = claimed
        if uncertain:
            settled = await self._settle_uncertain(request, channel, outgoing, since)
            if settled is not None:
                return settled

        # The provider call happens outside the transaction: no row lock held over the network.
        try:
            receipt = await channel.send(outgoing)
        except PermanentSendError as err:
            await self._finish(request.idempotency_key, MessageStatus.FAILED, reason=str(err)[:255])
            return SendResult(
                message_id=outgoing.message_id, status="failed", reason=str(err)[:255]
            )
        except TemporarySendError as err:
            if not err.maybe_accepted:  # the provider said no: the retry may simply send
                await self._mark(request.idempotency_key, MessageStatus.SENDING)
            raise
        await self._sent(request.idempotency_key, receipt.provider, receipt.provider_message_id)
        return SendResult(message_id=outgoing.message_id, status="sent")

    async def _claim_lean(
        self, request: SendRequest, channel: ChannelSender | None
    ) -> SendResult | _Claimed | None:
        """A new send that no rule holds, counts or records, in two statements: the path and
        everything the decision reads (`SEND_FACTS`), then the message row inserted decided,
        `attempting` (rendered first) or `skipped`, with the send's claim (`NEW_MESSAGE`).
        None: not such a send (a retry, a contact or enrollment gone, a missing template or
        one that does not render, a rule to apply), or a concurrent attempt made the row; the
        locking path `_claim` then decides, and records what needs recording."""
        async with driver_connection(self._sessions) as connection:
            facts = await connection.fetchrow(
                SEND_FACTS,
                *progress_arguments(request.enrollment_id, request.progress),
                request.idempotency_key,
                request.contact_id,
                request.channel,
                request.template,
            )
        if (
            facts["message_exists"]
            or facts["id"] is None
            or not facts["enrollment_exists"]
            or facts["template_id"] is None
        ):
            return None
        contact = ContactRow.of(facts)
        reason = skip_reason(contact, request.channel)
        if reason is None and facts["suppressed"] is not None:
            reason = f"{request.channel}_{facts['suppressed']}"
        if reason is None and request.exclusion_segment:
            async with autocommit(self._sessions)() as session:
                reason = await _exclusion_reason(session, request.exclusion_segment, contact.id)
        if reason is None and channel is None:
            reason = f"no {request.channel} channel configured"
        message_id = uuid.uuid4()
        if reason is not None:
            reason = reason[:255]
            made = await self._new_message(request, message_id, MessageStatus.SKIPPED, reason)
            return (
                SendResult(message_id=message_id, status="skipped", reason=reason) if made else None
            )
        at = request.at or utcnow()
        rules = SendRules.model_validate(facts["send_rules"] or {})
        if not goes_unchecked(request, at, contact.time_zone, rules):
            return None
        content = TemplateContent(
            key=request.template,
            channel=request.channel,
            version=facts["template_version"],
            subject=facts["template_subject"],
            html=facts["template_html"],
            text=facts["template_text"],
            template_id=facts["template_id"],
        )
        try:
            outgoing, version = await self._compose(content, request, message_id, contact)
        except TemplateRenderError:
            return None  # recorded as failed by the locking path
        since = utcnow()
        made = await self._new_message(
            request, message_id, MessageStatus.ATTEMPTING, version=version, since=since, claim_at=at
        )
        return (outgoing, False, since) if made else None

    async def _new_message(
        self,
        request: SendRequest,
        message_id: uuid.UUID,
        status: MessageStatus,
        reason: str | None = None,
        *,
        version: int | None = None,
        since: datetime | None = None,
        claim_at: datetime | None = None,
    ) -> bool:
        """`NEW_MESSAGE`: whether the row was made (False: an attempt made it meanwhile, or
        the contact was erased since it was read)."""
        async with driver_connection(self._sessions) as connection:
            try:
                made = await connection.fetchval(
                    NEW_MESSAGE,
                    message_id,
                    request.idempotency_key,
                    request.enrollment_id,
                    request.contact_id,
                    request.step,
                    request.channel,
                    request.template,
                    version,
                    status.value,
                    reason,
                    since,
                    claim_at,
                    request.transactional,
                    utcnow(),
                )
            except asyncpg.ForeignKeyViolationError:  # the locking path records it skipped
                return False
        return made is not None

    async def _claim(
        self, request: SendRequest, channel: ChannelSender | None
    ) -> SendResult | _Claimed:
        """The send decided in one transaction, its message row locked: a retry, or a send a
        rule applies to. A result when there is nothing to send; else what to send, whether
        an earlier attempt may have reached the provider, and since when."""
        async with self._sessions.begin() as session:
            # Read under the same transaction: a contact erased meanwhile (with its enrollment)
            # leaves a message row without them, recorded as skipped, not a failing insert.
            contact = await session.get(Contact, request.contact_id)
            enrollment_exists = await session.get(Enrollment, request.enrollment_id) is not None
            if enrollment_exists:  # the path up to this send, recorded with it
                await record_progress(session, request.enrollment_id, request.progress)
            message = await claimed_message(session, request.idempotency_key)
            if message is not None and message.status in _FINISHED:
                return SendResult(
                    message_id=message.id, status=message.status, reason=message.reason
                )
            reason = skip_reason(contact, request.channel)
            if reason is None and contact is not None:
                suppressed = await suppression_reason(session, contact.id, request.channel)
                if suppressed is not None:
                    reason = f"{request.channel}_{suppressed}"
            if reason is None and contact is not None and request.exclusion_segment:
                reason = await _exclusion_reason(session, request.exclusion_segment, contact.id)
            if reason is None and channel is None:
                reason = f"no {request.channel} channel configured"
            rule: str | None = None
            if reason is None and message is None and contact is not None:
                # A new send meets the send rules (a claimed one was decided and counted).
                met = await meet_send_rules(session, request, contact.time_zone, enrollment_exists)
                if met.held:
                    return SendResult(
                        message_id=None,
                        status="held",
                        reason=met.reason,
                        until=met.until,
                        rule=met.rule,
                    )
                reason, rule = met.reason, met.rule
            if message is None:
                message = await claim_message(
                    session,
                    key=request.idempotency_key,
                    enrollment_id=request.enrollment_id if enrollment_exists else None,
                    contact_id=request.contact_id if contact is not None else None,
                    step=request.step,
                    channel=request.channel,
                    template=request.template,
                )
            if reason is not None:
                message.status, message.reason = MessageStatus.SKIPPED, reason[:255]
                return SendResult(message_id=message.id, status="skipped", reason=reason, rule=rule)
            assert contact is not None and channel is not None
            try:
                content = await load_template(
                    session, request.channel, request.template, version=message.template_version
                )
                outgoing, version = await self._compose(content, request, message.id, contact)
            except (TemplateNotFound, TemplateRenderError) as err:
                # Content that cannot be rendered will not render on a retry either: the send
                # fails, is recorded, and the journey goes on.
                message.status, message.reason = MessageStatus.FAILED, str(err)[:255]
                return SendResult(message_id=message.id, status="failed", reason=message.reason)
            # Kept with the claim: a retry renders exactly the version the first attempt did.
            message.template_version = version
            uncertain = message.status == MessageStatus.ATTEMPTING
            since = message.attempted_at or utcnow()
            # Committed before the provider is called: a worker that dies during the call
            # leaves a row saying the provider may have the message.
            message.status, message.attempted_at = MessageStatus.ATTEMPTING, since
        return outgoing, uncertain, since

    async def _settle_uncertain(
        self,
        request: SendRequest,
        channel: ChannelSender,
        outgoing: OutgoingMessage,
        since: datetime,
    ) -> SendResult | None:
        """An earlier attempt may have reached the provider: the result when that is settled
        without sending (found at the provider, or recorded unknown), None to send (again)."""
        key = request.idempotency_key
        if isinstance(channel, DedupingChannel) and channel.dedupes_on_key:
            return None
        if isinstance(channel, SentLookup):
            try:
                receipt = await channel.find_sent(outgoing, since)
            except LookupUnavailable as err:
                activity.logger.warning("cannot look up %s: %s", outgoing.message_id, err)
            else:
                if receipt is None:
                    return None  # the provider does not have it: send
                activity.logger.info("%s was accepted before the worker stopped", key)
                await self._sent(key, receipt.provider, receipt.provider_message_id or None)
                return SendResult(message_id=outgoing.message_id, status="sent")
        if self._settings.uncertain_sends == "resend":
            return None
        reason = (
            f"{request.channel} provider may or may not have it: an earlier attempt was cut "
            "short during the provider call, which cannot be asked (UNCERTAIN_SENDS=unknown)"
        )[:255]
        await self._finish(key, MessageStatus.UNKNOWN, reason=reason)
        return SendResult(message_id=outgoing.message_id, status="unknown", reason=reason)

    async def _mark(self, key: str, status: MessageStatus) -> None:
        async with autocommit(self._sessions)() as session:
            await session.execute(
                update(Message).where(col(Message.idempotency_key) == key).values(status=status)
            )

    async def _match_early_webhooks(self, provider: str, provider_message_id: str) -> None:
        """A provider can report (delivered, bounced, opened) before we stored its id: those
        webhooks were kept unmatched, and are acted on now."""
        assert self._client is not None
        try:
            matched = await match_pending(
                self._sessions, self._client, provider, provider_message_id, self._options
            )
        except Exception:  # the message is sent; a retry of the send must not follow from this
            activity.logger.exception("webhooks for %s not matched", provider_message_id)
            return
        if matched:
            activity.logger.info("matched %d early webhooks to %s", matched, provider_message_id)

    async def _compose(
        self,
        content: TemplateContent,
        request: SendRequest,
        message_id: uuid.UUID,
        contact: ContactLike,
    ) -> tuple[OutgoingMessage, int]:
        """Render `content` for this contact, then track its links and add unsubscribe; with
        the template version rendered."""
        email = request.channel == "email"
        unsubscribe_url = self._tracker.unsubscribe_url(message_id) if email else None
        # In a render process, within its time and size limits (an overrun is a
        # TemplateRenderError): never on the worker's event loop.
        rendered = await render_isolated(
            content,
            message_context(
                contact,
                message_id=message_id,
                journey=request.journey_key,
                unsubscribe_url=unsubscribe_url,
                sent_at=request.at,
            ),
        )
        html = rendered.html
        if email and html is not None:
            html = self._tracker.track_html(
                html,
                message_id,
                clicks=self._settings.track_clicks,
                opens=self._settings.track_opens,
            )
        outgoing = OutgoingMessage(
            idempotency_key=request.idempotency_key,
            message_id=message_id,
            channel=request.channel,
            to_address=(contact.email if email else contact.phone) or "",
            template=request.template,
            subject=rendered.subject,
            html=html,
            text=rendered.text,
            headers=self._tracker.unsubscribe_headers(message_id) if email else {},
            variables={"journey": request.journey_key, "step": request.step},
        )
        return outgoing, rendered.version

    async def _sent(self, key: str, provider: str, provider_message_id: str | None) -> None:
        """Recorded sent, in one statement that also says whether webhooks about it came
        first; those are acted on now."""
        async with driver_connection(self._sessions) as connection:
            early = await connection.fetchval(SENT, key, utcnow(), provider, provider_message_id)
        if early and self._client is not None and provider_message_id:
            await self._match_early_webhooks(provider, provider_message_id)

    async def _finish(self, key: str, status: MessageStatus, **values: object) -> None:
        # One UPDATE, committed by itself: one round trip instead of BEGIN, UPDATE, COMMIT.
        async with autocommit(self._sessions)() as session:
            await finish_message(session, key, status, **values)


async def _exclusion_reason(
    session: AsyncSession, segment_key: str, contact_id: uuid.UUID
) -> str | None:
    try:
        excluded = await in_exclusion_segment(session, segment_key, contact_id)
    except MissingExclusionSegment:
        return f"exclusion segment {segment_key} missing"[:255]
    return f"in exclusion segment {segment_key}"[:255] if excluded else None
