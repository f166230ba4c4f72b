"""Segments: save a filter under a key, count and preview its members, or preview a filter
before saving it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from api.deps import ResourcesDep, SessionDep
from api.schemas.common import BODY_TOO_LARGE, Offset, error_responses
from api.schemas.segments import (
    CountOut,
    MemberOut,
    PreviewIn,
    PreviewOut,
    SegmentIn,
    SegmentOut,
    SegmentPage,
)
from nurture.audience.segments import service

router = APIRouter(prefix="/segments", tags=["segments"])

NO_SEGMENT = {404: "no segment with this key"}
INVALID_FILTER = (
    "the request or the filter is invalid: `detail` lists every problem as `{path, message}`, "
    "e.g. `filter.conditions.1.value`: expected a number for gt; unknown lists and journeys too"
)

SegmentKey = Annotated[
    str,
    Path(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="lower case letters, digits, `_` and `-`; at most 64",
    ),
]


@router.put(
    "/{key}",
    response_model=SegmentOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create or replace a segment",
    description="Creates the segment (201) or replaces its name and filter (200). The filter "
    "is checked first: its shape, each value against its field and operator, and that the "
    "lists, journeys and templates it names exist.",
    responses={
        200: {"model": SegmentOut, "description": "an existing segment, replaced"},
        **error_responses({413: BODY_TOO_LARGE, 422: INVALID_FILTER}),
    },
)
async def put_segment(
    key: SegmentKey, body: SegmentIn, resources: ResourcesDep, response: Response
) -> SegmentOut:
    saved = await service.put_segment(resources.sessions, key, body.name, body.filter)
    if not saved.created:
        response.status_code = status.HTTP_200_OK
    return SegmentOut.of(saved.segment)


@router.get(
    "",
    response_model=SegmentPage,
    summary="List the segments",
    description="Ordered by key.",
    responses=error_responses(),
)
async def list_segments(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> SegmentPage:
    segments = await service.list_segments(session, limit, offset)
    return SegmentPage(items=[SegmentOut.of(s) for s in segments], limit=limit, offset=offset)


@router.post(
    "/preview",
    response_model=PreviewOut,
    summary="Count and preview an unsaved filter",
    description="The same checks as saving, then how many contacts match now and some of "
    "them: see an audience before saving it.",
    responses=error_responses({413: BODY_TOO_LARGE, 422: INVALID_FILTER}),
)
async def preview_filter(body: PreviewIn, session: SessionDep) -> PreviewOut:
    filter = service.parse_filter(body.filter)
    await service.check_filter(session, filter)
    return PreviewOut(
        count=await service.count(session, filter),
        items=[MemberOut.of(c) for c in await service.preview(session, filter, body.limit)],
    )


@router.get(
    "/{key}",
    response_model=SegmentOut,
    summary="Get a segment",
    responses=error_responses(NO_SEGMENT),
)
async def get_segment(key: str, session: SessionDep) -> SegmentOut:
    return SegmentOut.of(await service.get_segment(session, key))


@router.delete(
    "/{key}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a segment",
    description="Refused (409, naming them) while a journey that is not archived starts on "
    "it or keeps its members out, in any published version.",
    responses=error_responses({**NO_SEGMENT, 409: "journeys use the segment"}),
)
async def delete_segment(key: str, resources: ResourcesDep) -> Response:
    await service.delete_segment(resources.sessions, key)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{key}/count",
    response_model=CountOut,
    summary="Count a segment's members now",
    description="Membership is computed on each request, never cached.",
    responses=error_responses(NO_SEGMENT),
)
async def count_segment(key: str, session: SessionDep) -> CountOut:
    segment = await service.get_segment(session, key)
    return CountOut(count=await service.count(session, segment))


@router.get(
    "/{key}/preview",
    response_model=PreviewOut,
    summary="Count a segment and show some of its members",
    responses=error_responses(NO_SEGMENT),
)
async def preview_segment(
    key: str, session: SessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> PreviewOut:
    segment = await service.get_segment(session, key)
    return PreviewOut(
        count=await service.count(session, segment),
        items=[MemberOut.of(c) for c in await service.preview(session, segment, limit)],
    )
