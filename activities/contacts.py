"""Activities that change a contact: fields and tags, and list membership.

`update_contact` records its operation key in the same transaction as the change, so a retry
after a lost acknowledgement sees the key and does not increment a counter twice. Both record
the change in the change log and announce it (`nurture.audience.changes`): the contact's other
enrollments reload it, and the journeys it now starts (a list joined, a segment entered) start.
A retry after a crash between the commit and the announcement announces what is still due.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.enrollment import contact_facts
from activities.path_rows import record_progress
from nurture.audience.changes import Announcer, Change, diff, record, tag_changes
from nurture.audience.limits import SizeLimits, json_size
from nurture.contracts import ContactChange, ContactFacts, ListChange, StepEntered
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    AppliedOperation,
    Contact,
    ContactChangeRecord,
    ContactList,
    ListMembership,
    utcnow,
)
from nurture.journeys.enrollments import EnrollmentOptions


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
    _check_size(contact.fields, fields, {**change.set, **{n: fields[n] for n in change.increment}})
    tags = [t for t in contact.tags if t not in set(change.remove_tags)]
    tags += [t for t in dict.fromkeys(change.add_tags) if t not in tags]
    contact.fields, contact.tags = fields, tags
    contact.updated_at = utcnow()


def _check_size(before: dict[str, Any], after: dict[str, Any], given: dict[str, Any]) -> None:
    """The size limits of every contact write (`nurture.audience.limits`): a step that would
    make the contact too large fails (on its path and timeline), and is not retried."""
    limits = SizeLimits.of()
    problems = limits.field_problems(given, prefix="set")
    if not problems and json_size(after) > json_size(before):
        problems += filter(None, [limits.contact_problem(after)])
    if problems:
        raise ApplicationError(
            "; ".join(f"{path}: {message}" for path, message in problems),
            type="ContactTooLarge",
            non_retryable=True,
        )


class ContactActivities:
    def __init__(
        self, sessions: SessionFactory, client: Client, options: EnrollmentOptions
    ) -> None:
        self._sessions = sessions
        self._announcer = Announcer(sessions, client, options)

    @activity.defn
    async def update_contact(self, change: ContactChange) -> ContactFacts:
        async with self._sessions.begin() as session:
            await self._record_path(session, change.enrollment_id, change.progress)
            contact = await session.get(Contact, change.contact_id, with_for_update=True)
            if contact is not None:
                first_time = await session.scalar(
                    insert(AppliedOperation)
                    .values(key=change.operation_key)
                    .on_conflict_do_nothing()
                    .returning(col(AppliedOperation.key))
                )
                if first_time is not None:
                    before_fields, before_tags = dict(contact.fields), list(contact.tags)
                    apply_change(contact, change)
                    await session.flush()
                    changed = {
                        **({"fields": f} if (f := diff(before_fields, contact.fields)) else {}),
                        **tag_changes(before_tags, contact.tags),
                    }
                    if changed:
                        await record(
                            session,
                            Change(
                                contact.id,
                                change.source,
                                changed,
                                origin_enrollment_id=change.enrollment_id,
                            ),
                        )
            facts = await contact_facts(session, change.contact_id, change.fields)
        await self._announce_due(change.contact_id, change.enrollment_id)
        return facts

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
            await self._record_path(session, change.enrollment_id, change.progress)
            exists = await session.get(Contact, change.contact_id)
            if exists is not None:
                if change.member:
                    joined = await session.scalar(
                        insert(ListMembership)
                        .values(list_id=list_id, contact_id=change.contact_id)
                        .on_conflict_do_nothing()
                        .returning(col(ListMembership.contact_id))
                    )
                    moved = Change(
                        change.contact_id,
                        change.source,
                        {"lists_joined": [change.list_key]},
                        joined_lists=[change.list_key],
                        origin_enrollment_id=change.enrollment_id,
                    )
                else:
                    joined = await session.scalar(
                        delete(ListMembership)
                        .where(
                            col(ListMembership.list_id) == list_id,
                            col(ListMembership.contact_id) == change.contact_id,
                        )
                        .returning(col(ListMembership.contact_id))
                    )
                    moved = Change(
                        change.contact_id,
                        change.source,
                        {"lists_left": [change.list_key]},
                        origin_enrollment_id=change.enrollment_id,
                    )
                if joined is not None:  # a retry finds the move made: nothing new to record
                    await record(session, moved)
            facts = await contact_facts(session, change.contact_id, change.fields)
        await self._announce_due(change.contact_id, change.enrollment_id)
        return facts

    @staticmethod
    async def _record_path(
        session: AsyncSession, enrollment_id: uuid.UUID | None, progress: list[StepEntered]
    ) -> None:
        """The path up to this step, recorded with the step's own change (nothing for an
        enrollment erased with its contact: the statement checks)."""
        if enrollment_id is not None:
            await record_progress(session, enrollment_id, progress)

    async def _announce_due(self, contact_id: uuid.UUID, enrollment_id: uuid.UUID | None) -> None:
        """Announce this enrollment's changes of the contact not announced yet: the one just
        made, or one a crashed attempt committed and never announced."""
        if enrollment_id is None:
            return  # not from a journey step; the relay announces it
        async with self._sessions() as session:
            due = list(
                await session.scalars(
                    select(col(ContactChangeRecord.id))
                    .where(
                        col(ContactChangeRecord.contact_id) == contact_id,
                        col(ContactChangeRecord.origin_enrollment_id) == enrollment_id,
                        col(ContactChangeRecord.announced_at).is_(None),
                    )
                    .order_by(col(ContactChangeRecord.id))
                )
            )
        await self._announcer.announce_now([int(i) for i in due if i is not None])
