"""Contacts: upsert by external id, patch, delete (GDPR).

Every change is written in one transaction; the contact's in-flight enrollments are signalled
only after it has committed, so a workflow that reloads the contact sees the change:
"contact_changed" after an upsert or patch (goals, waits and branches look at it at once),
"unenroll" with reason "contact_deleted" before a delete.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import JsonValue
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select
from temporalio.client import Client
from temporalio.service import RPCError

from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, utcnow
from nurture.errors import NotFound, Unavailable
from nurture.journeys.enrollments import EnrollmentOptions, signal_contact_enrollments
from nurture.journeys.triggers import on_contact_changed

Attribute = Literal["email", "phone", "time_zone"]


@dataclass(frozen=True)
class ContactChanges:
    """What a request changes. Anything left at its default is not touched."""

    attributes: Mapping[Attribute, str | None] = field(default_factory=dict)  # None clears
    replace_fields: Mapping[str, JsonValue] | None = None  # all fields become these
    merge_fields: Mapping[str, JsonValue] = field(default_factory=dict)  # a None value removes
    replace_tags: Sequence[str] | None = None
    add_tags: Sequence[str] = ()
    remove_tags: Sequence[str] = ()
    # Merged channel by channel: a recorded choice is only ever changed, never forgotten, so a
    # sync that leaves out a channel cannot erase a revocation.
    consent: Mapping[str, str] = field(default_factory=dict)


def apply_changes(contact: Contact, changes: ContactChanges) -> bool:
    """Change the contact in place; say whether anything actually changed."""
    before = _snapshot(contact)
    for attribute, setting in changes.attributes.items():
        setattr(contact, attribute, setting)
    fields: dict[str, Any] = (
        dict(contact.fields) if changes.replace_fields is None else dict(changes.replace_fields)
    )
    fields = {name: value for name, value in fields.items() if value is not None}
    for name, value in changes.merge_fields.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    tags = list(contact.tags if changes.replace_tags is None else changes.replace_tags)
    removed = set(changes.remove_tags)
    tags = [tag for tag in dict.fromkeys([*tags, *changes.add_tags]) if tag not in removed]
    contact.fields, contact.tags = fields, tags
    contact.consent = {**contact.consent, **changes.consent}
    if _snapshot(contact) == before:
        return False
    contact.updated_at = utcnow()
    return True


def _snapshot(contact: Contact) -> tuple[Any, ...]:
    return (
        contact.email,
        contact.phone,
        contact.time_zone,
        dict(contact.fields),
        list(contact.tags),
        dict(contact.consent),
    )


@dataclass(frozen=True)
class Upserted:
    contact: Contact
    created: bool
    changed: bool


async def upsert_contact(
    sessions: SessionFactory,
    client: Client,
    external_id: str,
    changes: ContactChanges,
    options: EnrollmentOptions | None = None,
) -> Upserted:
    """Create the contact with this external id, or change the existing one; with `options`,
    then start the journeys triggered by a segment it is now in."""
    for attempt in (1, 2):
        try:
            result = await _upsert(sessions, external_id, changes)
            break
        except IntegrityError:
            # A concurrent request created it first: the retry updates that one.
            if attempt == 2:
                raise
    if result.changed and not result.created:
        await _notify(sessions, client, result.contact.id)
    if options is not None and (result.changed or result.created):
        await on_contact_changed(sessions, client, options, result.contact.id)
    return result


async def _upsert(sessions: SessionFactory, external_id: str, changes: ContactChanges) -> Upserted:
    async with sessions.begin() as session:
        contact = await session.scalar(
            select(Contact).where(col(Contact.external_id) == external_id).with_for_update()
        )
        created = contact is None
        if contact is None:
            contact = Contact(external_id=external_id)
            session.add(contact)
        changed = apply_changes(contact, changes)
        await session.flush()
    return Upserted(contact, created, changed)


async def patch_contact(
    sessions: SessionFactory,
    client: Client,
    contact_id: uuid.UUID,
    changes: ContactChanges,
    options: EnrollmentOptions | None = None,
) -> Contact:
    async with sessions.begin() as session:
        contact = await session.get(Contact, contact_id, with_for_update=True)
        if contact is None:
            raise NotFound(f"no contact {contact_id}")
        changed = apply_changes(contact, changes)
    if changed:
        await _notify(sessions, client, contact_id)
        if options is not None:
            await on_contact_changed(sessions, client, options, contact_id)
    return contact


async def delete_contact(sessions: SessionFactory, client: Client, contact_id: uuid.UUID) -> None:
    """Unenroll the contact everywhere (reason "contact_deleted"), then delete the row: its
    enrollments, steps, memberships and events go with it; messages keep a NULL contact.

    Signalling comes first so that a failure leaves everything in place to try again. A
    workflow that misses the signal still finds the contact gone at its next step."""
    async with sessions() as session:
        if await session.get(Contact, contact_id) is None:
            raise NotFound(f"no contact {contact_id}")
    try:
        await signal_contact_enrollments(
            sessions, client, contact_id, "unenroll", "contact_deleted"
        )
    except RPCError as err:
        raise Unavailable(
            f"could not unenroll contact {contact_id} ({err.message}); nothing was deleted, "
            "repeat the request"
        ) from err
    async with sessions.begin() as session:
        await session.execute(delete(Contact).where(col(Contact.id) == contact_id))


async def _notify(sessions: SessionFactory, client: Client, contact_id: uuid.UUID) -> None:
    # Only real changes are signalled: a CRM sync repeating the same values every hour would
    # otherwise grow the history of every waiting enrollment without end.
    try:
        await signal_contact_enrollments(sessions, client, contact_id, "contact_changed")
    except RPCError as err:
        raise Unavailable(
            f"contact {contact_id} was saved, but its in-flight enrollments could not be told "
            f"({err.message}); they act on the previous values until its next change"
        ) from err
