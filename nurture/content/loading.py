"""Read a template for sending: its current version, or a given one."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from nurture.content.rendering import TemplateContent
from nurture.db.models import Template, TemplateVersion
from nurture.errors import NotFound


class TemplateNotFound(NotFound):
    """The template (or that version of it) does not exist: publishing checks that templates
    exist, but one can be deleted from the table afterwards."""


async def load_template(
    session: AsyncSession, channel: str, key: str, version: int | None = None
) -> TemplateContent:
    """The content to render: the template's current version, or `version` when given (a
    retried send can render exactly what its first attempt did).

    The current version is read from `templates` itself, so a template written to the table
    directly (no `template_versions` row yet) still sends, as its version 1.
    """
    template = await session.scalar(
        select(Template).where(col(Template.channel) == channel, col(Template.key) == key)
    )
    if template is None:
        raise TemplateNotFound(f"no {channel} template {key!r}")
    if version is None or version == template.version:
        return snapshot(template)
    stored = await session.scalar(
        select(TemplateVersion).where(
            col(TemplateVersion.template_id) == template.id,
            col(TemplateVersion.version) == version,
        )
    )
    if stored is None:
        raise TemplateNotFound(f"no version {version} of {channel} template {key!r}")
    return TemplateContent(
        key=template.key,
        channel=template.channel,
        version=stored.version,
        subject=stored.subject,
        html=stored.html,
        text=stored.text,
        template_id=template.id,
    )


def snapshot(template: Template) -> TemplateContent:
    """A template row's current content, detached from the session."""
    return TemplateContent(
        key=template.key,
        channel=template.channel,
        version=template.version,
        subject=template.subject,
        html=template.html,
        text=template.text,
        template_id=template.id,
    )
