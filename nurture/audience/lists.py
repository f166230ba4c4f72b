"""Static lists and their members. Joining a list starts the journeys it triggers.

Members are added in one transaction, all or none, with a change record per contact who
joined; once committed, the joins are announced (`nurture.audience.changes`), which starts the
journeys triggered by the list, only for contacts that were not members already.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select
from temporalio.client import Client

from nurture.audience.changes import Announcer, Change, record, record_many
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    Contact,
    ContactList,
    Enrollment,
    Journey,
    JourneyStatus,
    ListMembership,
)
from nurture.errors import Conflict, NotFound
from nurture.journeys.enrollments import EnrollmentOptions

logger = logging.getLogger(__name__)


async def create_list(sessions: SessionFactory, key: str, name: str) -> ContactList:
    try:
        async with sessions.begin() as session:
            if await session.scalar(select(ContactList.id).where(col(ContactList.key) == key)):
                raise Conflict(f"list {key!r} already exists")
            contact_list = ContactList(key=key, name=name)
            session.add(contact_list)
    except IntegrityError:  # created concurrently
        raise Conflict(f"list {key!r} already exists") from None
    return contact_list


@dataclass(frozen=True)
class MembersAdded:
    added: list[uuid.UUID]
    already_members: list[uuid.UUID]
    enrollments: list[Enrollment] = field(default_factory=list)


async def add_members(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    key: str,
    contact_ids: Sequence[uuid.UUID],
    source: str = "api",
) -> MembersAdded:
    """Add contacts to a list (all or none: an unknown id adds nobody); the joins are announced
    (`nurture.audience.changes`), which starts the journeys that the list triggers for those
    who joined now."""
    wanted = list(dict.fromkeys(contact_ids))
    async with sessions.begin() as session:
        list_id = await session.scalar(select(ContactList.id).where(col(ContactList.key) == key))
        if list_id is None:
            raise NotFound(f"no list {key!r}")
        # FOR SHARE: a contact cannot be deleted between this check and the insert.
        found = set(
            await session.scalars(
                select(Contact.id).where(col(Contact.id).in_(wanted)).with_for_update(read=True)
            )
        )
        unknown = [contact_id for contact_id in wanted if contact_id not in found]
        if unknown:
            raise NotFound(
                f"no contact {', '.join(map(str, unknown))}: nobody was added",
                detail=[str(contact_id) for contact_id in unknown],
            )
        inserted = set(
            await session.scalars(
                insert(ListMembership)
                .values([{"list_id": list_id, "contact_id": c} for c in wanted])
                .on_conflict_do_nothing()
                .returning(col(ListMembership.contact_id))
            )
        )
        added = [contact_id for contact_id in wanted if contact_id in inserted]
        change_ids = await record_many(
            session,
            [Change(c, source, {"lists_joined": [key]}, joined_lists=[key]) for c in added],
        )
    already = [contact_id for contact_id in wanted if contact_id not in inserted]
    announced = await Announcer(sessions, client, options).announce_now(change_ids)
    return MembersAdded(added, already, announced.enrollments)


async def remove_member(
    sessions: SessionFactory,
    client: Client,
    key: str,
    contact_id: uuid.UUID,
    options: EnrollmentOptions | None = None,
    source: str = "api",
) -> bool:
    """Take a contact off a list; say whether it was on it. The change is announced: its
    enrollments reload it, so `in_list` conditions see the change at once, and leaving the
    list can make it enter a segment ("not on the customers list") that starts a journey."""
    async with sessions.begin() as session:
        list_id = await session.scalar(select(ContactList.id).where(col(ContactList.key) == key))
        if list_id is None:
            raise NotFound(f"no list {key!r}")
        if await session.get(Contact, contact_id) is None:
            raise NotFound(f"no contact {contact_id}")
        removed = await session.scalar(
            delete(ListMembership)
            .where(
                col(ListMembership.list_id) == list_id,
                col(ListMembership.contact_id) == contact_id,
            )
            .returning(col(ListMembership.contact_id))
        )
        if removed is None:
            return False
        change_id = await record(
            session,
            Change(contact_id, source, {"lists_left": [key]}),
            announce_here=options is not None,
        )
    if options is not None:
        await Announcer(sessions, client, options).announce_now([change_id])
    return True


@dataclass(frozen=True)
class Member:
    contact_id: uuid.UUID
    external_id: str | None
    email: str | None
    added_at: datetime


async def list_members(
    sessions: SessionFactory, key: str, after: uuid.UUID | None = None, limit: int = 100
) -> list[Member]:
    """A page of a list's members in contact id order; pass the last id as `after` for the next
    (keyset paging: every page is an index range, however deep)."""
    async with sessions() as session:
        list_id = await session.scalar(select(ContactList.id).where(col(ContactList.key) == key))
        if list_id is None:
            raise NotFound(f"no list {key!r}")
        query = (
            select(
                col(ListMembership.contact_id),
                col(Contact.external_id),
                col(Contact.email),
                col(ListMembership.added_at),
            )
            .join(Contact, col(Contact.id) == col(ListMembership.contact_id))
            .where(col(ListMembership.list_id) == list_id)
            .order_by(col(ListMembership.contact_id))
            .limit(limit)
        )
        if after is not None:
            query = query.where(col(ListMembership.contact_id) > after)
        rows = (await session.execute(query)).all()
    return [Member(*row) for row in rows]


async def delete_list(sessions: SessionFactory, key: str) -> None:
    """Delete a list and its memberships, unless a journey that is not archived starts when
    contacts join it (`Conflict` names them). Conditions and segment filters naming the list
    then match nobody, as for any list a contact is not on."""
    async with sessions.begin() as session:
        contact_list = await session.scalar(
            select(ContactList).where(col(ContactList.key) == key).with_for_update()
        )
        if contact_list is None:
            raise NotFound(f"no list {key!r}")
        users = list(
            await session.scalars(
                select(col(Journey.key))
                .where(
                    col(Journey.trigger_type) == "list_joined",
                    col(Journey.trigger_key) == key,
                    col(Journey.status) != JourneyStatus.ARCHIVED,
                )
                .order_by(col(Journey.key))
            )
        )
        if users:
            raise Conflict(
                f"list {key!r} starts journey(s) {', '.join(users)}: archive them or publish "
                "them with another trigger first"
            )
        await session.delete(contact_list)
