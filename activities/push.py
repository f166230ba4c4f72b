"""The send_push step's activity: one push per device token of the contact.

Like `send_message`, a new push first meets the send rules (`nurture.sending.gate`: quiet
hours, frequency caps on channel "push", expiry; a held push returns "held" and leaves no
message row), then claims a message row (channel "push") by its idempotency key, so a
finished send is never repeated. Each token's delivery is remembered in
`applied_operations` (`<key>:<token id>`) as soon as the provider took it, so a retry after
a crash or a temporary error reaches only the tokens not reached yet (FCM has no idempotency
key: a crash between FCM's answer and that write can repeat one notification, no more).
A token the provider refuses as unregistered or invalid is removed from the contact.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from temporalio import activity

from activities.message_rows import claim_message, claimed_message, finish_message
from activities.path_rows import record_progress
from nurture.audience.devices import remove_devices
from nurture.audience.suppressions import suppression_reason
from nurture.channels.base import ChannelSender, OutgoingMessage, PermanentSendError
from nurture.channels.push import InvalidDeviceToken
from nurture.content.rendering import TemplateRenderError, message_context
from nurture.contracts import PushRequest, PushResult
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    AppliedOperation,
    Contact,
    DeviceToken,
    Enrollment,
    MessageStatus,
)
from nurture.outbound.webhooks import render_value
from nurture.sending.gate import meet_send_rules

_FINISHED = {MessageStatus.SENT, MessageStatus.SKIPPED, MessageStatus.FAILED}


class PushActivities:
    def __init__(self, sessions: SessionFactory, channels: Mapping[str, ChannelSender]) -> None:
        self._sessions = sessions
        self._channel = channels.get("push")

    @activity.defn
    async def send_push(self, request: PushRequest) -> PushResult:
        key = request.idempotency_key
        async with self._sessions.begin() as session:
            contact = await session.get(Contact, request.contact_id)
            enrollment_exists = await session.get(Enrollment, request.enrollment_id) is not None
            if enrollment_exists:
                await record_progress(session, request.enrollment_id, request.progress)
            message = await claimed_message(session, key)
            if message is not None and message.status in _FINISHED:
                return PushResult(status=message.status, reason=message.reason)
            reason = await self._skip_reason(session, contact)
            devices: list[DeviceToken] = []
            if reason is None and contact is not None:
                devices = list(
                    await session.scalars(
                        select(DeviceToken)
                        .where(col(DeviceToken.contact_id) == contact.id)
                        .order_by(col(DeviceToken.created_at))
                    )
                )
                if not devices:
                    reason = "no_device_token"
            rule: str | None = None
            if reason is None and message is None and contact is not None:
                # The same send rules as email and SMS, decided and claimed in this transaction.
                met = await meet_send_rules(session, request, contact.time_zone, enrollment_exists)
                if met.held:
                    return PushResult(
                        status="held", reason=met.reason, until=met.until, rule=met.rule
                    )
                reason, rule = met.reason, met.rule
            if message is None:
                message = await claim_message(
                    session,
                    key=key,
                    enrollment_id=request.enrollment_id if enrollment_exists else None,
                    contact_id=request.contact_id if contact is not None else None,
                    step=request.step,
                    channel="push",
                    template=f"push:{request.step}",
                )
            if reason is not None:
                message.status, message.reason = MessageStatus.SKIPPED, reason[:255]
                return PushResult(status="skipped", reason=reason, rule=rule)
            assert contact is not None and self._channel is not None
            context = message_context(contact, message_id=message.id, journey=request.journey_key)
            template_key = f"{request.journey_key}.{request.step}"
            try:
                title = await render_value(request.push.title, context, template_key, "title")
                body = await render_value(request.push.body, context, template_key, "body")
                data = await render_value(request.push.data, context, template_key, "data")
            except TemplateRenderError as err:
                message.status, message.reason = MessageStatus.FAILED, str(err)[:255]
                return PushResult(status="failed", reason=message.reason)
            # The timeline shows a push by its title ("Sent push 'Ada, your offer'").
            message.template = " ".join(str(title).split())[:255] or message.template
            message_id = message.id

        reached, invalid, refused = 0, [], []
        for device in devices:
            done_key = f"{key}:{device.id}"
            if await self._already(done_key):
                reached += 1
                continue
            outgoing = OutgoingMessage(
                idempotency_key=done_key,
                message_id=message_id,
                channel="push",
                to_address=device.token,
                template=f"push:{request.step}",
                subject=title,
                text=body,
                variables={"data": data, "journey": request.journey_key, "step": request.step},
            )
            try:
                receipt = await self._channel.send(outgoing)
            except InvalidDeviceToken as err:
                invalid.append(device.token)
                refused.append(str(err))
                continue
            except PermanentSendError as err:
                refused.append(str(err))
                continue
            reached += 1
            await self._remember(done_key)
            activity.logger.debug("push %s: %s", done_key, receipt.provider_message_id)
        removed = 0
        if invalid:
            async with self._sessions.begin() as session:
                removed = await remove_devices(
                    session, request.contact_id, invalid, f"push:{self._provider()}"
                )
        status = MessageStatus.SENT if reached else MessageStatus.FAILED
        reason = None
        if not reached:
            reason = ("; ".join(refused) or "no device reached")[:255]
        elif removed:
            reason = f"{removed} invalid device token(s) removed"
        async with self._sessions.begin() as session:
            await finish_message(session, key, status, reason=reason, provider=self._provider())
        return PushResult(
            status="sent" if reached else "failed",
            reason=reason,
            devices=reached,
            removed=removed,
        )

    def _provider(self) -> str:
        return str(getattr(self._channel, "provider", "push"))

    async def _skip_reason(self, session: AsyncSession, contact: Contact | None) -> str | None:
        if contact is None:
            return "contact_deleted"
        if contact.consent.get("push") == "revoked":
            return "push_consent_revoked"
        if self._channel is None:
            return "no push channel configured"
        suppressed = await suppression_reason(session, contact.id, "push")
        return f"push_{suppressed}" if suppressed is not None else None

    async def _already(self, done_key: str) -> bool:
        async with self._sessions() as session:
            return await session.get(AppliedOperation, done_key) is not None

    async def _remember(self, done_key: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                insert(AppliedOperation).values(key=done_key).on_conflict_do_nothing()
            )
