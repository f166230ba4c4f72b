"""Activities that change a contact: fields and tags, and list membership.

`update_contact` records its operation key in the same transaction as the change, so a retry
after a lost acknowledgement sees the key and does not increment a counter twice.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.enrollment import contact_facts
from nurture.contracts import ContactChange, ContactFacts, ListChange
from nurture.db.engine import SessionFactory
from nurture.db.models import AppliedOperation, Contact, ContactList, ListMembership, utcnow


def apply_change(contact: Contact, change: ContactChange) -> None:
    fields: dict[str, Any] = dict(contact.fields)
    fields.update(change.set)
    for name in change.unset:
        fields.pop(name, None)
    for name, amount in change.increment.items():
        current = fields.get(name, 0)
        if current is None:
            current = 0
        if isinstance(current, bool) or not isinstance(current, int | float):
            raise ApplicationError(
                f"cannot increment field {name!r}: it holds {current!r}, not a number",
                type="InvalidContactChange",
                non_retryable=True,
            )
        fields[name] = current + amount
    tags = [t for t in contact.tags if t not in set(change.remove_tags)]
    tags += [t for t in dict.fromkeys(change.add_tags) if t not in tags]
    contact.fields, contact.tags = fields, tags
    contact.updated_at = utcnow()


class ContactActivities:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    @activity.defn
    async def update_contact(self, change: ContactChange) -> ContactFacts:
        async with self._sessions.begin() as session:
            contact = await session.get(Contact, change.contact_id, with_for_update=True)
            if contact is not None:
                first_time = await session.scalar(
                    insert(AppliedOperation)
                    .values(key=change.operation_key)
                    .on_conflict_do_nothing()
                    .returning(col(AppliedOperation.key))
                )
                if first_time is not None:
                    apply_change(contact, change)
                    await session.flush()
            return await contact_facts(session, change.contact_id)

    @activity.defn
    async def change_list_membership(self, change: ListChange) -> ContactFacts:
        async with self._sessions.begin() as session:
            list_id = await session.scalar(
                select(col(ContactList.id)).where(col(ContactList.key) == change.list_key)
            )
            if list_id is None:
                raise ApplicationError(
                    f"unknown list {change.list_key!r}",
                    type="UnknownList",
                    non_retryable=True,
                )
            exists = await session.get(Contact, change.contact_id)
            if exists is not None:
                if change.member:
                    await session.execute(
                        insert(ListMembership)
                        .values(list_id=list_id, contact_id=change.contact_id)
                        .on_conflict_do_nothing()
                    )
                else:
                    await session.execute(
                        delete(ListMembership).where(
                            col(ListMembership.list_id) == list_id,
                            col(ListMembership.contact_id) == change.contact_id,
                        )
                    )
            return await contact_facts(session, change.contact_id)
