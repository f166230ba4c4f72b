"""Render a template for one contact, in a Jinja2 sandbox.

Templates are written through the API by anyone holding a key, so they run sandboxed: no
private attributes (`''.__class__`), no mutation of the context, no huge `*`/`**` results.
Unsafe access is an error rather than Jinja's default silent empty string, so a template that
tries it fails its preview and its sends visibly.

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
from functools import lru_cache
from typing import Any, Literal

from jinja2 import ChainableUndefined, Template, TemplateError, TemplateSyntaxError, Undefined
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from nurture.db.models import Contact
from nurture.errors import Invalid

Part = Literal["subject", "html", "text"]
PARTS: tuple[Part, ...] = ("subject", "html", "text")

# The names a template may read at its top level (see the module docstring).
TEMPLATE_VARIABLES = frozenset({"contact", "fields", "unsubscribe_url", "journey", "message_id"})
# What `contact` holds; `checks` flags `contact.first_name` and the like.
CONTACT_ATTRIBUTES = frozenset({"id", "email", "phone", "external_id", "time_zone", "tags"})

# Bounds on what one expression may build: a marketing message never needs more, and without
# them `{{ "x" * 10**10 }}` would exhaust the worker's memory.
MAX_REPEAT = 100_000
MAX_EXPONENT = 100

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


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, stricter in two ways and more natural for data in one (see below)."""

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        # The context is plain data, so a key wins over a dict method: a contact field named
        # "items" or "update" must render the field, not `<built-in method items...>`.
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        # Jinja returns an undefined that renders as "" (and ChainableUndefined would even chain
        # on it): an attempt to escape the sandbox must fail loudly instead.
        raise SecurityError(f"access to {attribute!r} of a {type(obj).__name__} is not allowed")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"an exponent over {MAX_EXPONENT} is not allowed")
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(times, int)
                    and len(sequence) * times > MAX_REPEAT
                ):
                    raise SecurityError(f"a repetition over {MAX_REPEAT} items is not allowed")
        return super().call_binop(context, operator, left, right)


def _finalize(value: Any) -> Any:
    # `{{ contact.phone }}` of a contact without one, or a field stored as null: show nothing,
    # never the word "None".
    return "" if value is None else value


def _environment(autoescape: bool) -> _Sandbox:
    return _Sandbox(
        autoescape=autoescape,
        undefined=ChainableUndefined,
        finalize=_finalize,
        keep_trailing_newline=True,  # a text body is sent exactly as written
    )


# One sandbox per escaping mode, shared by every render: building one is not free, and their
# own template cache is unused (templates come from strings, cached below instead).
HTML_ENVIRONMENT = _environment(autoescape=True)
PLAIN_ENVIRONMENT = _environment(autoescape=False)


def environment_for(part: str) -> _Sandbox:
    """HTML is escaped; the subject, the text part and SMS are not HTML, so they are not."""
    return HTML_ENVIRONMENT if part == "html" else PLAIN_ENVIRONMENT


@lru_cache(maxsize=2048)
def _compiled(template_id: object, version: int, part: str, source: str) -> Template:
    """Compile once per (template, version, part). The source is part of the key too, so a row
    edited in place (without a new version) is never rendered from a stale compilation."""
    return environment_for(part).from_string(source)


def render(template: TemplateContent, context: Mapping[str, Any]) -> RenderedContent:
    """Render every part the template has, with `context` (see `message_context`).

    Raises `TemplateRenderError` naming the template, the part and the line. `context` may only
    hold `TEMPLATE_VARIABLES`: anything else would let templates pass at send time that the
    publish-time check refuses, or the other way round.
    """
    unknown = set(context) - TEMPLATE_VARIABLES
    if unknown:
        raise ValueError(f"not template variables: {sorted(unknown)}")
    rendered: dict[str, str | None] = {}
    for part in PARTS:
        source: str | None = getattr(template, part)
        if source is None:
            rendered[part] = None
            continue
        cache_id = template.template_id or (template.channel, template.key)
        try:
            compiled = _compiled(cache_id, template.version, part, source)
            rendered[part] = compiled.render(context)
        except TemplateSyntaxError as err:
            raise TemplateRenderError(
                template.key, part, err.lineno, err.message or str(err)
            ) from err
        except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as err:
            # TemplateError includes SecurityError and UndefinedError; the others come from
            # expressions such as `{{ 1 / 0 }}` or `{{ fields.count + "a" }}`.
            raise TemplateRenderError(template.key, part, _line_of(err), _describe(err)) from err
    subject = rendered["subject"]
    if subject is not None:
        # A header is one line: a field holding a line break must not add headers to an email.
        subject = " ".join(subject.split())
    return RenderedContent(
        subject=subject, html=rendered["html"], text=rendered["text"], version=template.version
    )


def contact_context(contact: Contact) -> dict[str, Any]:
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
    contact: Contact,
    *,
    message_id: uuid.UUID | str,
    journey: str | None = None,
    unsubscribe_url: str | None = None,
) -> dict[str, Any]:
    """The whole render context of one message: the contact's, plus what the sender knows."""
    context = contact_context(contact)
    context["message_id"] = str(message_id)
    if journey is not None:
        context["journey"] = journey
    if unsubscribe_url is not None:
        context["unsubscribe_url"] = unsubscribe_url
    return context


def _line_of(err: BaseException) -> int | None:
    """The template line an error was raised on: Jinja rewrites tracebacks so that frames of
    template code carry the template's own file name and line numbers."""
    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        if frame.filename == _TEMPLATE_FILENAME:
            line = frame.lineno
    return line


def _describe(err: BaseException) -> str:
    return str(err) or type(err).__name__
