"""A contact's push device tokens (several per contact): add, list, remove.

A token belongs to one contact: registering it for another (a shared device, a new login)
moves it. Adding and removing are contact changes, recorded through the change path
(`nurture.audience.changes.record`), so the timeline shows them with who made them; a token
the push provider refuses as unregistered is removed the same way (source "push:<provider>").
Tokens are shown shortened (their last characters) in the change log.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from nurture.audience.changes import Change, record
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, DeviceToken
from nurture.errors import NotFound


def short(token: str) -> str:
    return f"…{token[-8:]}" if len(token) > 8 else token


async def add_device(
    sessions: SessionFactory,
    contact_id: uuid.UUID,
    token: str,
    platform: str | None = None,
    source: str = "api",
) -> tuple[DeviceToken, bool]:
    """Register the token for the contact; whether it is new to this contact."""
    async with sessions.begin() as session:
        if await session.get(Contact, contact_id) is None:
            raise NotFound(f"no contact {contact_id}")
        previous = await session.scalar(
            select(DeviceToken).where(col(DeviceToken.token) == token).with_for_update()
        )
        if previous is not None and previous.contact_id == contact_id:
            if platform and previous.platform != platform:
                previous.platform = platform
            return previous, False
        if previous is not None:  # moved from another contact
            await session.delete(previous)
            await session.flush()
            await record(
                session,
                Change(
                    previous.contact_id, source, {"devices_removed": [short(token)]}, reload=False
                ),
                announce_here=False,
            )
        device = DeviceToken(contact_id=contact_id, token=token, platform=platform)
        session.add(device)
        await session.flush()
        await record(
            session,
            Change(contact_id, source, {"devices_added": [short(token)]}, reload=False),
            announce_here=False,
        )
        return device, True


async def list_devices(session: AsyncSession, contact_id: uuid.UUID) -> list[DeviceToken]:
    rows = await session.scalars(
        select(DeviceToken)
        .where(col(DeviceToken.contact_id) == contact_id)
        .order_by(col(DeviceToken.created_at))
    )
    return list(rows)


async def remove_devices(
    session: AsyncSession, contact_id: uuid.UUID, tokens: Sequence[str], source: str
) -> int:
    """Remove these tokens of the contact in the caller's transaction; how many were there."""
    removed = list(
        await session.scalars(
            delete(DeviceToken)
            .where(col(DeviceToken.contact_id) == contact_id, col(DeviceToken.token).in_(tokens))
            .returning(col(DeviceToken.token))
        )
    )
    if removed:
        await record(
            session,
            Change(
                contact_id, source, {"devices_removed": [short(t) for t in removed]}, reload=False
            ),
            announce_here=False,
        )
    return len(removed)


async def remove_device(
    sessions: SessionFactory, contact_id: uuid.UUID, token: str, source: str = "api"
) -> None:
    async with sessions.begin() as session:
        if not await remove_devices(session, contact_id, [token], source):
            raise NotFound(f"contact {contact_id} has no such device token")
