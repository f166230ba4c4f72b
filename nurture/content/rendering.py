"""Render a template for one contact, in a Jinja2 sandbox.

Templates are written through the API by anyone holding a key, so they run sandboxed
(`nurture.content.sandbox`): no private attributes (`''.__class__`), no mutation of the
context, and no value larger than a message can hold (`"x" * 10**9`, `"x".center(10**9)`).
Unsafe access is an error rather than Jinja's default silent empty string, so a template that
tries it fails its preview and its sends visibly. Each part's output is limited too
(`MAX_OUTPUT_BYTES`), counted as it is produced.

`render` here runs in the calling thread, without a time limit: the API and the worker use
`nurture.content.isolation.render_isolated`, which runs the same code in a render process,
off their event loops, with a CPU-time limit and a kill switch.

The context is fixed and documented (docs/templates.md); `checks.template_problems` refuses any
other top-level name when a template is saved or a journey published:

- `contact`: id, email, phone, external_id, time_zone, tags (an attribute the contact does
  not have, e.g. no phone, is undefined);
- `fields`: the contact's custom fields, e.g. `{{ fields.first_name | default("there") }}`;
- `unsubscribe_url`, `journey` (the journey's key), `message_id`: given by the sender.

Undefined values are `ChainableUndefined`: a field one contact lacks renders empty (or its
`default`) instead of failing that contact's send. HTML is autoescaped, so a field holding
`<script>` is shown, not run; the subject and the text part (and SMS) are not, since they are
not HTML and `&lt;` would show literally.
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from jinja2 import ChainableUndefined, Template, TemplateError, TemplateSyntaxError

from nurture.content.dates import DATE_FILTERS
from nurture.content.sandbox import (
    MAX_EXPONENT,
    MAX_INT_BITS,
    MAX_REPEAT,
    MAX_VALUE_LENGTH,
    LimitExceeded,
    Sandbox,
    finalize,
)
from nurture.errors import Invalid

if TYPE_CHECKING:  # only a type here: the render process does not load the database modules
    from nurture.db.rows import ContactLike

__all__ = [
    "MAX_EXPONENT",
    "MAX_INT_BITS",
    "MAX_OUTPUT_BYTES",
    "MAX_REPEAT",
    "MAX_VALUE_LENGTH",
    "RenderedContent",
    "TemplateContent",
    "TemplateLimitError",
    "TemplateRenderError",
    "contact_context",
    "environment_for",
    "message_context",
    "render",
    "render_part",
]

Part = Literal["subject", "html", "text"]
PARTS: tuple[Part, ...] = ("subject", "html", "text")

# The names a template may read at its top level (see the module docstring).
TEMPLATE_VARIABLES = frozenset(
    {"contact", "fields", "unsubscribe_url", "journey", "message_id", "sent_at"}
)
# What `contact` holds; `checks` flags `contact.first_name` and the like.
CONTACT_ATTRIBUTES = frozenset({"id", "email", "phone", "external_id", "time_zone", "tags"})

# The most one part (subject, html or text) may render to, in UTF-8 bytes. Providers take
# less (SendGrid 30 MB for a whole message, Postmark 10 MB, an SMS a few hundred bytes).
MAX_OUTPUT_BYTES = 1_000_000

# Jinja names templates compiled from strings so; tracebacks carry it, which finds the line.
_TEMPLATE_FILENAME = "<template>"


@dataclass(frozen=True)
class TemplateContent:
    """One version of a template, as stored: what `render` renders and `load_template` returns."""

    key: str
    channel: str  # "email" | "sms"
    version: int
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    template_id: uuid.UUID | None = None  # None for content that is not stored (ad hoc)


@dataclass(frozen=True)
class RenderedContent:
    """What a channel sends (see `OutgoingMessage`), and the template version it came from."""

    subject: str | None
    html: str | None
    text: str | None
    version: int


class TemplateRenderError(Invalid):
    """A template could not be rendered: a syntax error, an unsafe access, an undefined value
    used in arithmetic... Retrying does not help until the template is fixed."""

    def __init__(self, template_key: str, part: str, line: int | None, message: str) -> None:
        where = f"{part} line {line}" if line is not None else part
        super().__init__(f'template "{template_key}" {where}: {message}')
        self.template_key = template_key
        self.part = part
        self.line = line
        self.problem = message  # without the template and place; `message` has them


class TemplateLimitError(TemplateRenderError):
    """A template went over a limit: it took too long to render, its output is too large, it
    built a value too large, nested too deeply or used too much memory. The same content
    would go over it again, so it is as final as any other render error."""


def _environment(autoescape: bool) -> Sandbox:
    environment = Sandbox(
        autoescape=autoescape,
        undefined=ChainableUndefined,
        finalize=finalize,
        keep_trailing_newline=True,  # a text body is sent exactly as written
    )
    environment.filters.update(DATE_FILTERS)  # small strings out: no limits to add
    return environment


# One sandbox per escaping mode, shared by every render: building one is not free, and their
# own template cache is unused (templates come from strings, cached below instead).
HTML_ENVIRONMENT = _environment(autoescape=True)
PLAIN_ENVIRONMENT = _environment(autoescape=False)


def environment_for(part: str) -> Sandbox:
    """HTML is escaped; the subject, the text part and SMS are not HTML, so they are not."""
    return HTML_ENVIRONMENT if part == "html" else PLAIN_ENVIRONMENT


@lru_cache(maxsize=2048)
def _compiled(template_id: object, version: int, part: str, source: str) -> Template:
    """Compile once per (template, version, part). The source is part of the key too, so a row
    edited in place (without a new version) is never rendered from a stale compilation."""
    return environment_for(part).from_string(source)


def check_context(context: Mapping[str, Any]) -> None:
    """`context` may only hold `TEMPLATE_VARIABLES`: anything else would let templates pass at
    send time that the publish-time check refuses, or the other way round."""
    unknown = set(context) - TEMPLATE_VARIABLES
    if unknown:
        raise ValueError(f"not template variables: {sorted(unknown)}")


def render(template: TemplateContent, context: Mapping[str, Any]) -> RenderedContent:
    """Render every part the template has, with `context` (see `message_context`), here and
    now: without a time limit (see `nurture.content.isolation.render_isolated`).

    Raises `TemplateRenderError` naming the template, the part and the line, a
    `TemplateLimitError` when it goes over a limit.
    """
    check_context(context)
    rendered: dict[str, str | None] = {
        part: render_part(template, part, context)
        for part in PARTS
        if getattr(template, part) is not None
    }
    return assemble(template, rendered)


def assemble(template: TemplateContent, rendered: Mapping[str, str | None]) -> RenderedContent:
    """The rendered parts as a channel takes them (a part not rendered is None)."""
    subject = rendered.get("subject")
    if subject is not None:
        # A header is one line: a field holding a line break must not add headers to an email.
        subject = " ".join(subject.split())
    return RenderedContent(
        subject=subject,
        html=rendered.get("html"),
        text=rendered.get("text"),
        version=template.version,
    )


def render_part(
    template: TemplateContent,
    part: str,
    context: Mapping[str, Any],
    max_output_bytes: int = MAX_OUTPUT_BYTES,
) -> str:
    """One part of `template` (which must have it), its output counted as it is produced
    and refused past `max_output_bytes` (UTF-8)."""
    source: str = getattr(template, part)
    cache_id = template.template_id or (template.channel, template.key)
    try:
        compiled = _compiled(cache_id, template.version, part, source)
        pieces: list[str] = []
        produced = 0
        for piece in compiled.generate(context):
            produced += (
                len(piece) if piece.isascii() else len(piece.encode("utf-8", "surrogatepass"))
            )
            if produced > max_output_bytes:
                raise TemplateLimitError(
                    template.key, part, None, f"output over {max_output_bytes} bytes"
                )
            pieces.append(piece)
        return "".join(pieces)
    except TemplateRenderError:
        raise
    except TemplateSyntaxError as err:
        raise TemplateRenderError(template.key, part, err.lineno, err.message or str(err)) from err
    except LimitExceeded as err:
        raise TemplateLimitError(template.key, part, line_of(err), describe(err)) from err
    except RecursionError as err:
        # A macro calling itself, or data nested too deeply to print.
        raise TemplateLimitError(template.key, part, line_of(err), "nests too deeply") from err
    except MemoryError as err:
        raise TemplateLimitError(template.key, part, line_of(err), "used too much memory") from err
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as err:
        # TemplateError includes SecurityError and UndefinedError; the others come from
        # expressions such as `{{ 1 / 0 }}` or `{{ fields.count + "a" }}`.
        raise TemplateRenderError(template.key, part, line_of(err), describe(err)) from err


def contact_context(contact: ContactLike) -> dict[str, Any]:
    """`contact` and `fields` for a template, as plain JSON-safe data.

    Empty values are left out rather than set to None, so `{{ contact.phone | default("-") }}`
    and `{{ fields.first_name | default("there") }}` apply to a field stored as null too.
    """
    attributes = {
        "id": str(contact.id),
        "email": contact.email,
        "phone": contact.phone,
        "external_id": contact.external_id,
        "time_zone": contact.time_zone,
        "tags": list(contact.tags or []),
    }
    return {
        "contact": {name: value for name, value in attributes.items() if value is not None},
        "fields": {
            name: value for name, value in (contact.fields or {}).items() if value is not None
        },
    }


def message_context(
    contact: ContactLike,
    *,
    message_id: uuid.UUID | str,
    journey: str | None = None,
    unsubscribe_url: str | None = None,
    sent_at: datetime | None = None,
) -> dict[str, Any]:
    """The whole render context of one message: the contact's, plus what the sender knows.
    `sent_at` (ISO 8601, UTC; now when not given) is the send time, for date arithmetic such
    as `{{ sent_at | add_days(7) | date("%d %B", contact.time_zone) }}`."""
    context = contact_context(contact)
    context["sent_at"] = (sent_at or datetime.now(UTC)).astimezone(UTC).isoformat()
    context["message_id"] = str(message_id)
    if journey is not None:
        context["journey"] = journey
    if unsubscribe_url is not None:
        context["unsubscribe_url"] = unsubscribe_url
    return context


def line_of(err: BaseException) -> int | None:
    """The template line an error was raised on: Jinja rewrites tracebacks so that frames of
    template code carry the template's own file name and line numbers."""
    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        if frame.filename == _TEMPLATE_FILENAME:
            line = frame.lineno
    return line


def describe(err: BaseException) -> str:
    return str(err) or type(err).__name__
