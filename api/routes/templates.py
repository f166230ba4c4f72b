"""Templates: create or replace (each change a new version), read, list, their versions,
preview for a contact, and test sends. Publishing a journey needs its templates, valid."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from api.deps import ResourcesDep, SessionDep
from api.resources import Resources
from api.schemas.common import BODY_TOO_LARGE, PG_INT_MAX, Offset, error_responses
from api.schemas.templates import (
    PreviewIn,
    PreviewOut,
    TemplateChannel,
    TemplateIn,
    TemplateOut,
    TemplatePage,
    TemplateSummary,
    TemplateVersionList,
    TemplateVersionOut,
    TemplateVersionSummary,
    TestSendIn,
    TestSendOut,
)
from nurture.channels.base import ChannelSender, OutgoingMessage, PermanentSendError
from nurture.channels.outbox import OutboxChannel
from nurture.content.checks import content_problems, limit_problems
from nurture.content.isolation import render_isolated
from nurture.content.loading import load_template
from nurture.content.rendering import RenderedContent, message_context
from nurture.db.models import Contact, Template, TemplateVersion, utcnow
from nurture.errors import Invalid, NotFound, Unavailable

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/templates", tags=["templates"])

TemplateKey = Annotated[
    str, Path(min_length=1, max_length=255, description="as send steps name it")
]

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
TEST_SUBJECT_PREFIX = "[Test] "


def _out(template: Template) -> TemplateOut:
    return TemplateOut(
        channel=template.channel,  # only "email" | "sms" are stored
        key=template.key,
        version=template.version,
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
    "template needs `text` and nothing else. Content is Jinja2 (see docs/templates.md): a "
    "syntax error or a variable outside the render context is refused with its part and line, "
    "and so is content that goes over a render limit (time, output size) even for a contact "
    "without fields. "
    "Each change of content is a new version (the first PUT is version 1); the same content "
    "again changes nothing. Replacing a template changes what journeys send from now on, in "
    "every journey version that names it.",
    responses=error_responses({413: BODY_TOO_LARGE}),
)
async def put_template(
    channel: TemplateChannel, key: TemplateKey, body: TemplateIn, resources: ResourcesDep
) -> TemplateOut:
    problems = body.problems(channel) + [
        {"path": f"body.{p['path']}", "message": p["message"]}
        for p in content_problems(body.subject, body.html, body.text)
    ]
    if not problems:
        # Rendered once, off the event loop: a template that takes too long or renders too
        # much even for a contact without fields is refused now, not at every send.
        problems = [
            {"path": f"body.{p['path']}", "message": p["message"]}
            for p in await limit_problems(
                channel,
                body.subject,
                body.html,
                body.text,
                unsubscribe_url=_preview_unsubscribe_url(resources),
            )
        ]
    if problems:
        raise Invalid(f"this is not a valid {channel} template", detail=problems)
    content = (body.subject, body.html, body.text)
    for attempt in (1, 2):
        try:
            async with resources.sessions.begin() as session:
                template = await session.scalar(
                    select(Template)
                    .where(col(Template.channel) == channel, col(Template.key) == key)
                    .with_for_update()
                )
                if template is None:
                    template = Template(channel=channel, key=key, version=1)
                    template.subject, template.html, template.text = content
                    session.add(template)
                    await session.flush()
                elif (template.subject, template.html, template.text) != content:
                    # A template written before versions existed (or to the table directly)
                    # keeps its current content as a version before it is replaced.
                    await _record_version(session, template)
                    template.version += 1
                    template.subject, template.html, template.text = content
                    template.updated_at = utcnow()
                await _record_version(session, template)
            return _out(template)
        except IntegrityError:  # created concurrently: the retry replaces it
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _record_version(session: AsyncSession, template: Template) -> None:
    """Store the template's current content as its current version, unless it already is."""
    await session.execute(
        insert(TemplateVersion)
        .values(
            id=uuid.uuid4(),
            template_id=template.id,
            version=template.version,
            subject=template.subject,
            html=template.html,
            text=template.text,
            created_at=template.updated_at,
        )
        .on_conflict_do_nothing(index_elements=["template_id", "version"])
    )


async def _template(session: AsyncSession, channel: str, key: str) -> Template:
    template = await session.scalar(
        select(Template).where(col(Template.channel) == channel, col(Template.key) == key)
    )
    if template is None:
        raise NotFound(f"no {channel} template {key!r}")
    return template


@router.get(
    "/{channel}/{key}",
    response_model=TemplateOut,
    summary="Get a template",
    responses=error_responses({404: "no template with this channel and key"}),
)
async def get_template(
    channel: TemplateChannel, key: TemplateKey, session: SessionDep
) -> TemplateOut:
    return _out(await _template(session, channel, key))


async def _versions(session: AsyncSession, template: Template) -> list[TemplateVersion]:
    rows = list(
        await session.scalars(
            select(TemplateVersion)
            .where(col(TemplateVersion.template_id) == template.id)
            .order_by(col(TemplateVersion.version))
        )
    )
    if template.version not in {row.version for row in rows}:
        # Written to the table directly (seeded, or before versions existed): its current
        # content is still a version, the one sends render.
        current = TemplateVersion(
            template_id=template.id,
            version=template.version,
            subject=template.subject,
            html=template.html,
            text=template.text,
            created_at=template.updated_at,
        )
        rows = sorted([*rows, current], key=lambda row: row.version)
    return rows


@router.get(
    "/{channel}/{key}/versions",
    response_model=TemplateVersionList,
    summary="List a template's versions",
    description="Every saved content of the template, oldest first, without html and text. "
    "A message records the version it rendered (`template_version`).",
    responses=error_responses({404: "no template with this channel and key"}),
)
async def list_template_versions(
    channel: TemplateChannel, key: TemplateKey, session: SessionDep
) -> TemplateVersionList:
    template = await _template(session, channel, key)
    return TemplateVersionList(
        items=[
            TemplateVersionSummary(version=v.version, subject=v.subject, created_at=v.created_at)
            for v in await _versions(session, template)
        ]
    )


@router.get(
    "/{channel}/{key}/versions/{version}",
    response_model=TemplateVersionOut,
    summary="Get one version of a template",
    responses=error_responses({404: "no template with this channel and key, or no such version"}),
)
async def get_template_version(
    channel: TemplateChannel,
    key: TemplateKey,
    version: Annotated[int, Path(ge=1, le=PG_INT_MAX)],
    session: SessionDep,
) -> TemplateVersionOut:
    template = await _template(session, channel, key)
    for stored in await _versions(session, template):
        if stored.version == version:
            return TemplateVersionOut(
                version=stored.version,
                subject=stored.subject,
                html=stored.html,
                text=stored.text,
                created_at=stored.created_at,
            )
    raise NotFound(f"no version {version} of {channel} template {key!r}")


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
    offset: Offset = 0,
) -> TemplatePage:
    query = select(Template).order_by(col(Template.channel), col(Template.key))
    if channel is not None:
        query = query.where(col(Template.channel) == channel)
    rows = await session.scalars(query.limit(limit).offset(offset))
    items = [
        TemplateSummary(
            channel=t.channel,
            key=t.key,
            version=t.version,
            subject=t.subject,
            updated_at=t.updated_at,
        )
        for t in rows
    ]
    return TemplatePage(items=items, limit=limit, offset=offset)


# --- preview and test send --------------------------------------------------------------------


def _preview_unsubscribe_url(resources: Resources) -> str:
    """A link shaped like the real one that unsubscribes no one: a preview or a test send is
    not a journey message, and a tester clicking it must not suppress the contact."""
    return f"{resources.settings.public_base_url.rstrip('/')}/v1/u/preview"


async def _personalise(
    session: AsyncSession, body: PreviewIn, resources: Resources, message_id: uuid.UUID
) -> dict[str, Any]:
    """The render context for the contact the body names, or for its sample data."""
    contact: Contact | None
    if body.contact_id is not None:
        contact = await session.get(Contact, body.contact_id)
        if contact is None:
            raise NotFound(f"no contact {body.contact_id}")
    elif body.external_id is not None:
        contact = await session.scalar(
            select(Contact).where(col(Contact.external_id) == body.external_id)
        )
        if contact is None:
            raise NotFound(f"no contact with external_id {body.external_id!r}")
    else:  # sample data, never stored
        contact = Contact(
            email=body.email,
            phone=body.phone,
            time_zone=body.time_zone,
            tags=list(body.tags or []),
            fields=dict(body.fields or {}),
        )
    return message_context(
        contact,
        message_id=message_id,
        journey=body.journey,
        unsubscribe_url=_preview_unsubscribe_url(resources),
    )


async def _render_for(
    session: AsyncSession,
    channel: str,
    key: str,
    body: PreviewIn,
    resources: Resources,
    message_id: uuid.UUID,
) -> tuple[RenderedContent, dict[str, Any]]:
    template = await load_template(session, channel, key)
    context = await _personalise(session, body, resources, message_id)
    # In a render process, within its time and size limits: never on the API's event loop.
    return await render_isolated(template, context), context


@router.post(
    "/{channel}/{key}/preview",
    response_model=PreviewOut,
    summary="Render a template for a contact or sample data",
    description="Renders the current version exactly as a send would, for a stored contact "
    "(`contact_id` or `external_id`) or sample data (`email`, `phone`, `time_zone`, `tags`, "
    "`fields`). `unsubscribe_url` renders as a link that unsubscribes no one. Nothing is sent "
    "or stored.",
    responses=error_responses(
        {
            404: "no such template or contact",
            422: "the body is invalid, or rendering failed or went over a limit",
        }
    ),
)
async def preview_template(
    channel: TemplateChannel,
    key: TemplateKey,
    body: PreviewIn,
    session: SessionDep,
    resources: ResourcesDep,
) -> PreviewOut:
    rendered, _ = await _render_for(session, channel, key, body, resources, uuid.uuid4())
    return PreviewOut(
        subject=rendered.subject, html=rendered.html, text=rendered.text, version=rendered.version
    )


def _sender(resources: Resources, channel: str) -> ChannelSender:
    if resources.channels is None:
        return OutboxChannel(resources.sessions)
    sender = resources.channels.get(channel)
    if sender is None:
        raise Unavailable(f"no {channel} channel is configured")
    return sender


def _check_address(channel: str, to: str) -> None:
    if channel == "email":
        local, _, domain = to.partition("@")
        if not local or "." not in domain or any(c.isspace() for c in to):
            raise Invalid("not a valid address", [{"path": "body.to", "message": "not an email"}])
    elif not _E164.fullmatch(to):
        raise Invalid(
            "not a valid address",
            [{"path": "body.to", "message": "not a phone number in E.164 form (+15555550100)"}],
        )


@router.post(
    "/{channel}/{key}/test-send",
    response_model=TestSendOut,
    status_code=202,
    summary="Send a template to a test address",
    description="Renders like a preview and hands the message to the channel journeys use, to "
    "`to` (an email address, or a phone in E.164 form for SMS), the subject prefixed "
    '"[Test] ". A test send is not a journey message: it is not recorded in messages, skips '
    "suppression and consent checks, and its unsubscribe link unsubscribes no one.",
    responses=error_responses(
        {
            404: "no such template or contact",
            422: "the body is invalid, rendering failed, or the provider refused the message",
            503: "the channel could not take the message now, or none is configured",
        }
    ),
)
async def test_send_template(
    channel: TemplateChannel,
    key: TemplateKey,
    body: TestSendIn,
    session: SessionDep,
    resources: ResourcesDep,
) -> TestSendOut:
    _check_address(channel, body.to)
    message_id = uuid.uuid4()
    rendered, context = await _render_for(session, channel, key, body, resources, message_id)
    sender = _sender(resources, channel)
    subject = TEST_SUBJECT_PREFIX + rendered.subject if rendered.subject is not None else None
    message = OutgoingMessage(
        # Never the key of a journey send: a test must not stand in for (or dedupe) a real one.
        idempotency_key=f"test-send:{uuid.uuid4()}",
        message_id=message_id,
        channel=channel,
        to_address=body.to,
        template=key,
        subject=subject,
        html=rendered.html,
        text=rendered.text,
        variables=context,
    )
    try:
        receipt = await sender.send(message)
    except PermanentSendError as err:
        raise Invalid(f"the provider refused the message: {err}") from err
    except Exception as err:
        # Anything else is temporary for the send path (it retries); here the caller retries.
        logger.warning("test send of %s template %r failed", channel, key, exc_info=True)
        raise Unavailable(
            f"the {channel} channel could not take the message now ({type(err).__name__}); "
            "try again"
        ) from err
    return TestSendOut(provider=receipt.provider, provider_message_id=receipt.provider_message_id)
