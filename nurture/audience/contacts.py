"""Contacts: upsert by external id, patch, delete (GDPR).

Every change is written in one transaction with its record in the change log, and announced
once it has committed (`nurture.audience.changes`): the contact's in-flight enrollments reload
it (goals, waits and branches look at the new values at once) and the journeys it now
qualifies for start. Only real changes are recorded: a CRM sync repeating the same values every
hour would otherwise grow the history of every waiting enrollment without end. A delete
signals "unenroll" with reason "contact_deleted" first.
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

from nurture.audience.changes import Announcer, Change, diff, record, tag_changes
from nurture.audience.limits import SizeLimits, json_size
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, utcnow
from nurture.errors import NotFound, Unavailable
from nurture.journeys.enrollments import EnrollmentOptions, erase_enrollments

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
    # Marks (True) or unmarks (False) a test contact; None leaves it (docs/launching.md).
    test: bool | None = None


def apply_changes(
    contact: Contact, changes: ContactChanges, limits: SizeLimits | None = None
) -> dict[str, Any]:
    """Change the contact in place; what actually changed, for the change log (empty: nothing
    did). Values or a contact over the size limits are refused (413) before anything changes."""
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
    if fields != before["fields"]:
        limits = limits or SizeLimits.of()
        given = changes.replace_fields or {}
        limits.check_fields({**given, **changes.merge_fields}, _grown(before["fields"], fields))
    tags = list(contact.tags if changes.replace_tags is None else changes.replace_tags)
    removed = set(changes.remove_tags)
    tags = [tag for tag in dict.fromkeys([*tags, *changes.add_tags]) if tag not in removed]
    contact.fields, contact.tags = fields, tags
    contact.consent = {**contact.consent, **changes.consent}
    if changes.test is not None:
        contact.is_test = changes.test
    changed = _changes_between(before, _snapshot(contact))
    if changed:
        contact.updated_at = utcnow()
    return changed


def _grown(before: Mapping[str, Any], after: Mapping[str, Any]) -> Mapping[str, Any]:
    """The fields to hold to the contact limit: `after`, unless it is no larger than `before`
    (a contact stored over the limit before the limit existed may still shrink)."""
    return after if json_size(dict(after)) > json_size(dict(before)) else {}


def _snapshot(contact: Contact) -> dict[str, Any]:
    return {
        "attributes": {
            "email": contact.email,
            "phone": contact.phone,
            "time_zone": contact.time_zone,
        },
        "fields": dict(contact.fields),
        "tags": list(contact.tags),
        "consent": dict(contact.consent),
        "test": contact.is_test,
    }


def _changes_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for part in ("attributes", "fields", "consent"):
        if changed := diff(before[part], after[part]):
            found[part] = changed
    found.update(tag_changes(before["tags"], after["tags"]))
    if before["test"] != after["test"]:
        found["test"] = [before["test"], after["test"]]
    return found


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
    source: str = "api",
) -> Upserted:
    """Create the contact with this external id, or change the existing one; then announce
    the change (`nurture.audience.changes`). Without `options` the worker's relay announces
    it."""
    for attempt in (1, 2):
        try:
            result, change_id = await _upsert(sessions, external_id, changes, source, options)
            break
        except IntegrityError:
            # A concurrent request created it first: the retry updates that one.
            if attempt == 2:
                raise
    if change_id is not None and options is not None:
        await Announcer(sessions, client, options).announce_now([change_id])
    return result


async def _upsert(
    sessions: SessionFactory,
    external_id: str,
    changes: ContactChanges,
    source: str,
    options: EnrollmentOptions | None,
) -> tuple[Upserted, int | None]:
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
        change_id = None
        if changed or created:
            change_id = await record(
                session,
                Change(
                    contact.id,
                    source,
                    {"created": True, **changed} if created else changed,
                    # A new contact has no enrollments to tell; it may enter segments.
                    reload=not created,
                ),
                announce_here=options is not None,
            )
    return Upserted(contact, created, bool(changed)), change_id


async def patch_contact(
    sessions: SessionFactory,
    client: Client,
    contact_id: uuid.UUID,
    changes: ContactChanges,
    options: EnrollmentOptions | None = None,
    source: str = "api",
) -> Contact:
    async with sessions.begin() as session:
        contact = await session.get(Contact, contact_id, with_for_update=True)
        if contact is None:
            raise NotFound(f"no contact {contact_id}")
        changed = apply_changes(contact, changes)
        change_id = None
        if changed:
            change_id = await record(
                session, Change(contact_id, source, changed), announce_here=options is not None
            )
    if change_id is not None and options is not None:
        await Announcer(sessions, client, options).announce_now([change_id])
    return contact


async def delete_contact(sessions: SessionFactory, client: Client, contact_id: uuid.UUID) -> None:
    """Unenroll the contact everywhere (reason "contact_deleted"), then delete the row: its
    enrollments, steps, memberships and events go with it; messages keep a NULL contact.

    Signalling comes first so that a failure leaves everything in place to try again (503 while
    Temporal is away). A workflow that refuses the signal (a limit of its own) is terminated:
    erasure must always succeed. A workflow that misses the signal still finds the contact gone
    at its next step."""
    async with sessions() as session:
        if await session.get(Contact, contact_id) is None:
            raise NotFound(f"no contact {contact_id}")
    try:
        await erase_enrollments(sessions, client, contact_id)
    except (RPCError, TimeoutError) as err:
        why = err.message if isinstance(err, RPCError) else "Temporal did not answer in time"
        raise Unavailable(
            f"could not unenroll contact {contact_id} ({why}); nothing was deleted, "
            "repeat the request"
        ) from err
    async with sessions.begin() as session:
        await session.execute(delete(Contact).where(col(Contact.id) == contact_id))
