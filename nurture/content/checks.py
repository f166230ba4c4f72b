"""What is wrong with a template, found before anything is sent.

A misspelt variable renders empty at send time (undefined values are forgiving, so one contact
lacking a field does not fail its send), so the check happens when a template is saved and
again when a journey using it is published: `{{ frist_name }}` is refused there, with its part
and line, instead of greeting every contact with "Hi ,". Saving also renders the template once
(`limit_problems`), refusing one that goes over a render limit even without contact data.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from jinja2 import TemplateSyntaxError, meta, nodes

from nurture.content.isolation import render_part_isolated
from nurture.content.rendering import (
    CONTACT_ATTRIBUTES,
    PARTS,
    TEMPLATE_VARIABLES,
    TemplateContent,
    TemplateLimitError,
    TemplateRenderError,
    environment_for,
)

Problem = dict[str, str]


def template_problems(
    channel: str, subject: str | None, html: str | None, text: str | None
) -> list[Problem]:
    """Every problem of a stored template, as `{"path": part, "message": ...}`.

    `path` is the part ("subject", "html", "text", or "" for the template as a whole); callers
    put it where it belongs (`body.html` for the API, the step for publishing). Covers the shape
    (an email needs a subject and html or text; an SMS is a body only) and the Jinja content.
    """
    return shape_problems(channel, subject, html, text) + content_problems(subject, html, text)


def shape_problems(
    channel: str, subject: str | None, html: str | None, text: str | None
) -> list[Problem]:
    """The parts a channel needs and allows (the API checks the same on its own request body;
    this is for templates stored some other way, e.g. written to the table directly)."""
    found: list[Problem] = []
    if channel == "email":
        if not subject:
            found.append({"path": "subject", "message": "an email needs a subject"})
        if not html and not text:
            found.append({"path": "", "message": "an email needs html or text (or both)"})
    elif channel == "sms":
        if not text:
            found.append({"path": "text", "message": "an SMS needs text"})
        for name, value in (("subject", subject), ("html", html)):
            if value is not None:
                found.append({"path": name, "message": f"an SMS has no {name}"})
    else:
        found.append({"path": "", "message": f"unknown channel {channel!r}"})
    return found


def content_problems(subject: str | None, html: str | None, text: str | None) -> list[Problem]:
    """The Jinja problems of each part present (see `part_problems`)."""
    found: list[Problem] = []
    for part, source in (("subject", subject), ("html", html), ("text", text)):
        if source is not None:
            found += part_problems(part, source)
    return found


def part_problems(part: str, source: str) -> list[Problem]:
    """Syntax errors (including unknown filters), unknown top-level variables, attributes that
    `contact` does not have, and private attributes the sandbox would refuse; each with its
    line, first by line."""
    environment = environment_for(part)
    try:
        tree = environment.parse(source)
        # Compiling finds what parsing does not, e.g. a filter that does not exist.
        environment.compile(tree)
    except TemplateSyntaxError as err:
        return [{"path": part, "message": f"line {err.lineno}: {err.message or err}"}]

    found: list[tuple[int, str]] = []
    undeclared = meta.find_undeclared_variables(tree)
    for name in undeclared - TEMPLATE_VARIABLES:
        hint = f"contact.{name}" if name in CONTACT_ATTRIBUTES else f"fields.{name}"
        kind = "a contact attribute" if name in CONTACT_ATTRIBUTES else "a contact field"
        found.append(
            (_first_line(tree, name), f'unknown variable "{name}" (use {hint} for {kind})')
        )
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        attribute = _attribute_name(node)
        if attribute is None:
            continue
        target = getattr(node, "node", None)  # what the attribute is read from
        if attribute.startswith("_"):
            found.append((node.lineno, f'"{attribute}" is not allowed (a private attribute)'))
        elif (
            "contact" in undeclared  # `contact` is the context's, not a loop variable's
            and isinstance(target, nodes.Name)
            and target.name == "contact"
            and attribute not in CONTACT_ATTRIBUTES
        ):
            found.append(
                (
                    node.lineno,
                    f'contact has no "{attribute}" (use fields.{attribute} for a contact field)',
                )
            )
    found.sort()
    return [{"path": part, "message": f"line {line}: {message}"} for line, message in found]


def _first_line(tree: nodes.Template, name: str) -> int:
    lines = [node.lineno for node in tree.find_all(nodes.Name) if node.name == name]
    return min(lines, default=1)


def _attribute_name(node: nodes.Node) -> str | None:
    """`x.name` or `x["name"]`: the name; anything else (`x[0]`, `x[key]`): None."""
    if isinstance(node, nodes.Getattr):
        return str(node.attr)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        value = node.arg.value
        return value if isinstance(value, str) else None
    return None


async def limit_problems(
    channel: str,
    subject: str | None,
    html: str | None,
    text: str | None,
    unsubscribe_url: str | None = None,
) -> list[Problem]:
    """The parts that go over a render limit (time, output size, a value too large) when
    rendered for a contact without fields, as an empty preview renders them; in a render
    process (`isolation`), so a slow template costs the caller nothing but the wait.

    Other render errors are not problems here: they can depend on the contact (`{{ 1 /
    fields.count }}`), and a preview with real data shows them. Run it on content that
    `template_problems` passed (it must compile)."""
    content = TemplateContent(
        key="(being saved)", channel=channel, version=0, subject=subject, html=html, text=text
    )
    context: dict[str, Any] = {
        "contact": {"id": str(uuid.uuid4()), "tags": []},
        "fields": {},
        "message_id": str(uuid.uuid4()),
        "sent_at": datetime.now(UTC).isoformat(),
    }
    if unsubscribe_url is not None:
        context["unsubscribe_url"] = unsubscribe_url
    found: list[Problem] = []
    for part in PARTS:
        if getattr(content, part) is None:
            continue
        try:
            await render_part_isolated(content, part, context)
        except TemplateLimitError as err:
            where = f"line {err.line}: " if err.line is not None else ""
            found.append(
                {
                    "path": part,
                    "message": f"{where}{err.problem} (rendered for a contact without fields)",
                }
            )
        except TemplateRenderError:
            continue
    return found
