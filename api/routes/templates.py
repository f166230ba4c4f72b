"""Templates: create or replace, read, list. Publishing a journey needs its templates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from api.deps import ResourcesDep, SessionDep
from api.schemas.common import BODY_TOO_LARGE, error_responses
from api.schemas.templates import (
    TemplateChannel,
    TemplateIn,
    TemplateOut,
    TemplatePage,
    TemplateSummary,
)
from nurture.db.models import Template, utcnow
from nurture.errors import Invalid, NotFound

router = APIRouter(prefix="/templates", tags=["templates"])

TemplateKey = Annotated[
    str, Path(min_length=1, max_length=255, description="as send steps name it")
]


def _out(template: Template) -> TemplateOut:
    return TemplateOut(
        channel=template.channel,  # only "email" | "sms" are stored
        key=template.key,
        subject=template.subject,
        html=template.html,
        text=template.text,
        created_at=template.created_at,
        updated_at=template.updated_at,
    )


@router.put(
    "/{channel}/{key}",
    response_model=TemplateOut,
    summary="Create or replace a template",
    description="An email template needs a `subject` and `html` or `text` (or both); an SMS "
    "template needs `text` and nothing else. Replacing a template changes what journeys send "
    "from now on, in every version that names it.",
    responses=error_responses({413: BODY_TOO_LARGE}),
)
async def put_template(
    channel: TemplateChannel, key: TemplateKey, body: TemplateIn, resources: ResourcesDep
) -> TemplateOut:
    problems = body.problems(channel)
    if problems:
        raise Invalid(f"this is not a valid {channel} template", detail=problems)
    for attempt in (1, 2):
        try:
            async with resources.sessions.begin() as session:
                template = await session.scalar(
                    select(Template)
                    .where(col(Template.channel) == channel, col(Template.key) == key)
                    .with_for_update()
                )
                if template is None:
                    template = Template(channel=channel, key=key)
                    session.add(template)
                template.subject, template.html, template.text = body.subject, body.html, body.text
                template.updated_at = utcnow()
                await session.flush()
            return _out(template)
        except IntegrityError:  # created concurrently: the retry replaces it
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@router.get(
    "/{channel}/{key}",
    response_model=TemplateOut,
    summary="Get a template",
    responses=error_responses({404: "no template with this channel and key"}),
)
async def get_template(
    channel: TemplateChannel, key: TemplateKey, session: SessionDep
) -> TemplateOut:
    template = await session.scalar(
        select(Template).where(col(Template.channel) == channel, col(Template.key) == key)
    )
    if template is None:
        raise NotFound(f"no {channel} template {key!r}")
    return _out(template)


@router.get(
    "",
    response_model=TemplatePage,
    summary="List templates",
    description="Ordered by channel and key, without their content.",
    responses=error_responses(),
)
async def list_templates(
    session: SessionDep,
    channel: TemplateChannel | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> TemplatePage:
    query = select(Template).order_by(col(Template.channel), col(Template.key))
    if channel is not None:
        query = query.where(col(Template.channel) == channel)
    rows = await session.scalars(query.limit(limit).offset(offset))
    items = [
        TemplateSummary(
            channel=t.channel,
            key=t.key,
            subject=t.subject,
            updated_at=t.updated_at,
        )
        for t in rows
    ]
    return TemplatePage(items=items, limit=limit, offset=offset)
