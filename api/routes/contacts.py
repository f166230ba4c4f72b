"""Contacts: upsert by external id, read, find, patch, delete (GDPR).

A contact in the path is a reference (`id:<uuid>`, `ext:<external id>` or bare): see
api/contact_refs.py and docs/contacts.md."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from api.contact_refs import ContactRefDep, ContactRefParam, find_contact
from api.deps import ResourcesDep, SessionDep
from api.schemas.common import BODY_TOO_LARGE, Offset, error_responses
from api.schemas.contacts import (
    ContactOut,
    ContactPage,
    ContactPatch,
    ContactUpsert,
    EnrollmentSummary,
)
from nurture.audience.contacts import delete_contact, patch_contact, upsert_contact
from nurture.db.models import Contact, ContactList, Enrollment, Journey, ListMembership
from nurture.errors import NotFound

router = APIRouter(prefix="/contacts", tags=["contacts"])

MALFORMED_REF = (
    "the request is invalid: `detail` lists every problem as `{path, message}`; for a "
    "malformed contact reference (`path.ref`) the message says what is expected"
)
NO_CONTACT = {404: "no contact with this reference", 422: MALFORMED_REF}
ENROLLMENTS_SHOWN = 100

REF_SCHEME = (
    "`{ref}` names the contact: `id:<uuid>` (Nurture's id), `ext:<external id>` (your own "
    "id), or a bare value: a uuid is looked up as Nurture's id first, then as an external id; "
    "anything else is an external id. Percent-encode it as one path segment (`a/b` is "
    "`a%2Fb`, `100%` is `100%25`)."
)


async def contacts_out(session: AsyncSession, contacts: Sequence[Contact]) -> list[ContactOut]:
    """Contacts with their lists and latest enrollments, in three queries for the whole page."""
    ids = [contact.id for contact in contacts]
    lists: dict[uuid.UUID, list[str]] = defaultdict(list)
    enrollments: dict[uuid.UUID, list[EnrollmentSummary]] = defaultdict(list)
    if ids:
        memberships = await session.execute(
            select(col(ListMembership.contact_id), col(ContactList.key))
            .join(ContactList, col(ContactList.id) == col(ListMembership.list_id))
            .where(col(ListMembership.contact_id).in_(ids))
            .order_by(col(ContactList.key))
        )
        for contact_id, list_key in memberships:
            lists[contact_id].append(list_key)
        newest = (
            func.row_number()
            .over(
                partition_by=col(Enrollment.contact_id),
                order_by=(col(Enrollment.enrolled_at).desc(), col(Enrollment.id)),
            )
            .label("newest")
        )
        ranked = (
            select(col(Enrollment.id), newest).where(col(Enrollment.contact_id).in_(ids)).subquery()
        )
        rows = await session.execute(
            select(Enrollment, col(Journey.key))
            .join(Journey, col(Journey.id) == col(Enrollment.journey_id))
            .join(ranked, ranked.c.id == col(Enrollment.id))
            .where(ranked.c.newest <= ENROLLMENTS_SHOWN)
            .order_by(col(Enrollment.enrolled_at).desc(), col(Enrollment.id))
            .execution_options(populate_existing=True)
        )
        for enrollment, journey_key in rows:
            enrollments[enrollment.contact_id].append(
                EnrollmentSummary(
                    id=enrollment.id,
                    journey_key=journey_key,
                    version=enrollment.version,
                    status=enrollment.status,
                    current_step=enrollment.current_step,
                    exit_reason=enrollment.exit_reason,
                    enrolled_at=enrollment.enrolled_at,
                )
            )
    return [
        ContactOut(
            id=c.id,
            external_id=c.external_id,
            email=c.email,
            phone=c.phone,
            time_zone=c.time_zone,
            fields=c.fields,
            tags=c.tags,
            consent=c.consent,
            test=c.is_test,
            lists=lists[c.id],
            enrollments=enrollments[c.id],
            created_at=c.created_at,
            updated_at=c.updated_at,
        )
        for c in contacts
    ]


async def contact_out(session: AsyncSession, contact_id: uuid.UUID) -> ContactOut:
    contact = await session.get(Contact, contact_id, populate_existing=True)
    if contact is None:
        raise NotFound(f"no contact {contact_id}")
    return (await contacts_out(session, [contact]))[0]


@router.put(
    "/{ref}",
    response_model=ContactOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create or update a contact by your own id (or update one by Nurture's id)",
    description="Creates the contact (201) or updates it (200). Attributes left out of the "
    "body are not changed; `fields` and `tags`, when given, replace the stored ones; "
    "`consent` is merged channel by channel. A change is recorded with the source `api` and "
    "announced at once (docs/changes.md): the contact's in-flight enrollments reload it, so "
    "goals, waits and branches see the new values, and journeys that start on a segment it "
    "now entered start. If Temporal cannot be reached, the change is kept and announced by "
    "the worker once it can.\n\n"
    f"{REF_SCHEME} Here an external id (`ext:<id>` or a bare value) creates the contact when "
    "nobody has it; `id:<uuid>`, or a bare uuid that is a contact's id, updates that contact "
    "(404 for an `id:` nobody has); a bare uuid that is nobody's id is an external id.",
    responses={
        200: {"model": ContactOut, "description": "an existing contact, updated"},
        **error_responses(
            {
                404: "`id:<uuid>` names no contact",
                413: BODY_TOO_LARGE,
                422: MALFORMED_REF,
            }
        ),
    },
)
async def upsert(
    ref: ContactRefParam,
    body: ContactUpsert,
    resources: ResourcesDep,
    session: SessionDep,
    response: Response,
) -> ContactOut:
    contact_id = await find_contact(session, ref) if ref.contact_id is not None else None
    if ref.kind == "id" and contact_id is None:
        raise NotFound(f"no contact with reference {ref.described()}")
    if contact_id is not None:
        await patch_contact(
            resources.sessions,
            resources.temporal,
            contact_id,
            body.changes(),
            options=resources.enrollment_options,
        )
        response.status_code = status.HTTP_200_OK
        return await contact_out(session, contact_id)
    assert ref.external_id is not None  # every reference but id: has one
    result = await upsert_contact(
        resources.sessions,
        resources.temporal,
        ref.external_id,
        body.changes(),
        options=resources.enrollment_options,
    )
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return await contact_out(session, result.contact.id)


@router.get(
    "/{ref}",
    response_model=ContactOut,
    summary="Get a contact with its lists and enrollments",
    description=REF_SCHEME,
    responses=error_responses(NO_CONTACT),
)
async def get_contact(contact_id: ContactRefDep, session: SessionDep) -> ContactOut:
    return await contact_out(session, contact_id)


@router.get(
    "",
    response_model=ContactPage,
    summary="Find contacts by external id or email, or list them",
    description="`external_id` finds at most one contact; `email` may find several. Without "
    "a filter, every contact, oldest first.",
    responses=error_responses(),
)
async def list_contacts(
    session: SessionDep,
    external_id: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
    email: Annotated[str | None, Query(min_length=1, max_length=320)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> ContactPage:
    query = select(Contact).order_by(col(Contact.created_at), col(Contact.id))
    if external_id is not None:
        query = query.where(col(Contact.external_id) == external_id)
    if email is not None:
        query = query.where(col(Contact.email) == email.strip())
    contacts = list(await session.scalars(query.limit(limit).offset(offset)))
    return ContactPage(items=await contacts_out(session, contacts), limit=limit, offset=offset)


@router.patch(
    "/{ref}",
    response_model=ContactOut,
    summary="Change part of a contact",
    description="Only what is given changes: `fields` are merged (a `null` value removes a "
    "field), `add_tags` / `remove_tags` change tags, `consent` is merged channel by channel, "
    "`null` clears email, phone or time_zone. If anything changed, the change is announced "
    "at once (docs/changes.md): a goal now met ends the contact's enrollments before their "
    "next step, even during a wait, and segment journeys it now qualifies for start.\n\n"
    + REF_SCHEME,
    responses=error_responses({**NO_CONTACT, 413: BODY_TOO_LARGE}),
)
async def patch(
    contact_id: ContactRefDep, body: ContactPatch, resources: ResourcesDep, session: SessionDep
) -> ContactOut:
    await patch_contact(
        resources.sessions,
        resources.temporal,
        contact_id,
        body.changes(),
        options=resources.enrollment_options,
    )
    return await contact_out(session, contact_id)


@router.delete(
    "/{ref}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a contact and its history (GDPR)",
    description="First every in-flight enrollment of the contact is unenrolled (reason "
    "`contact_deleted`), then the contact is deleted with its enrollments, steps, list "
    "memberships and events. Messages sent to it are kept without a contact (no address is "
    "stored in them). If Temporal cannot be reached, nothing is deleted (503).\n\n" + REF_SCHEME,
    responses=error_responses(
        {**NO_CONTACT, 503: "Temporal could not be reached; nothing was deleted"}
    ),
)
async def delete(contact_id: ContactRefDep, resources: ResourcesDep) -> Response:
    await delete_contact(resources.sessions, resources.temporal, contact_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
