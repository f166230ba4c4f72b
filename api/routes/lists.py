"""Static lists: create, read, delete; add members (starting the journeys a list triggers),
page through them, remove them."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from api.contact_refs import ContactRefParam, resolve_contact_ref
from api.deps import ResourcesDep, SessionDep
from api.schemas.common import BODY_TOO_LARGE, Offset, error_responses
from api.schemas.lists import (
    ListIn,
    ListOut,
    ListPage,
    MemberOut,
    MemberPage,
    MembersAddedOut,
    MembersIn,
)
from nurture.audience.lists import (
    add_members,
    create_list,
    delete_list,
    list_members,
    remove_member,
)
from nurture.db.models import ContactList, ListMembership
from nurture.errors import NotFound

router = APIRouter(prefix="/lists", tags=["lists"])

NO_LIST = {404: "no list with this key"}


async def _lists_out(session: AsyncSession, lists: list[ContactList]) -> list[ListOut]:
    counts: dict[uuid.UUID, int] = {}
    if lists:
        rows = await session.execute(
            select(col(ListMembership.list_id), func.count())
            .where(col(ListMembership.list_id).in_([item.id for item in lists]))
            .group_by(col(ListMembership.list_id))
        )
        counts = {list_id: count for list_id, count in rows}
    return [
        ListOut(
            key=item.key,
            name=item.name,
            member_count=counts.get(item.id, 0),
            created_at=item.created_at,
        )
        for item in lists
    ]


@router.post(
    "",
    response_model=ListOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create a list",
    responses=error_responses({409: "a list with this key exists", 413: BODY_TOO_LARGE}),
)
async def post_list(body: ListIn, resources: ResourcesDep, session: SessionDep) -> ListOut:
    created = await create_list(resources.sessions, body.key, body.name)
    return (await _lists_out(session, [created]))[0]


@router.get(
    "",
    response_model=ListPage,
    summary="List the lists, with member counts",
    description="Ordered by key.",
    responses=error_responses(),
)
async def get_lists(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> ListPage:
    rows = await session.scalars(
        select(ContactList).order_by(col(ContactList.key)).limit(limit).offset(offset)
    )
    return ListPage(items=await _lists_out(session, list(rows)), limit=limit, offset=offset)


@router.get(
    "/{key}",
    response_model=ListOut,
    summary="Get a list with its member count",
    responses=error_responses(NO_LIST),
)
async def get_list(key: str, session: SessionDep) -> ListOut:
    found = await session.scalar(select(ContactList).where(col(ContactList.key) == key))
    if found is None:
        raise NotFound(f"no list {key!r}")
    return (await _lists_out(session, [found]))[0]


@router.post(
    "/{key}/members",
    response_model=MembersAddedOut,
    summary="Add contacts to a list; journeys triggered by the list start for them",
    description="All or nothing: if any contact id is unknown, nobody is added and the 404 "
    "lists the unknown ids in `detail`. After the members are saved, journeys whose trigger "
    "is joining this list (`list_joined`) start for each contact that joined now; contacts "
    "that were members already are left as they are and start nothing. A contact a journey "
    "refuses (re-entry rules) is not enrolled; its timeline says why. If Temporal cannot be "
    "reached, the joins are kept and the worker starts the journeys once it can.",
    responses=error_responses(
        {
            404: "no such list, or unknown contact ids (listed in `detail`)",
            413: BODY_TOO_LARGE,
        }
    ),
)
async def post_members(key: str, body: MembersIn, resources: ResourcesDep) -> MembersAddedOut:
    result = await add_members(
        resources.sessions,
        resources.temporal,
        resources.enrollment_options,
        key,
        body.contact_ids,
    )
    return MembersAddedOut(
        added=result.added,
        already_members=result.already_members,
        enrollments_started=[enrollment.id for enrollment in result.enrollments],
    )


@router.delete(
    "/{key}/members/{ref}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Take a contact off a list",
    description="The contact's in-flight enrollments are told at once, so `in_list` "
    "conditions see it. Journeys it entered by joining the list go on. Taking off a contact "
    "that is not a member changes nothing (204).\n\n"
    "`{ref}` names the contact: `id:<uuid>` (Nurture's id), `ext:<external id>` (your own "
    "id), or a bare value: a uuid is looked up as Nurture's id first, then as an external id; "
    "anything else is an external id. Percent-encode it as one path segment (`a/b` is "
    "`a%2Fb`).",
    responses=error_responses(
        {
            404: "no such list or contact",
            422: "the request is invalid: `detail` lists every problem as `{path, message}`; "
            "for a malformed contact reference (`path.ref`) the message says what is expected",
        }
    ),
)
async def delete_member(
    key: str, ref: ContactRefParam, resources: ResourcesDep, session: SessionDep
) -> Response:
    if await session.scalar(select(col(ContactList.id)).where(col(ContactList.key) == key)) is None:
        raise NotFound(f"no list {key!r}")  # an unknown list is named first, as before
    contact_id = await resolve_contact_ref(ref, session)
    await remove_member(
        resources.sessions, resources.temporal, key, contact_id, resources.enrollment_options
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{key}/members",
    response_model=MemberPage,
    summary="Page through a list's members",
    description="In contact id order. For the next page pass the last `contact_id` as "
    "`after` (`next_after` says it; null on the last page).",
    responses=error_responses(NO_LIST),
)
async def get_members(
    key: str,
    resources: ResourcesDep,
    after: Annotated[uuid.UUID | None, Query(description="the last contact id seen")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MemberPage:
    members = await list_members(resources.sessions, key, after, limit)
    return MemberPage(
        items=[
            MemberOut(
                contact_id=m.contact_id,
                external_id=m.external_id,
                email=m.email,
                added_at=m.added_at,
            )
            for m in members
        ],
        next_after=members[-1].contact_id if len(members) == limit else None,
    )


@router.delete(
    "/{key}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a list and its memberships",
    description="Refused (409, naming them) while a journey that is not archived starts when "
    "contacts join the list. Contacts are not deleted; journey conditions and segment filters "
    "that name the list then match nobody.",
    responses=error_responses({**NO_LIST, 409: "journeys start on joining this list"}),
)
async def delete_contact_list(key: str, resources: ResourcesDep) -> Response:
    await delete_list(resources.sessions, key)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
