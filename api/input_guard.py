"""What every request must be before a route sees it: readable, and storable in PostgreSQL.

One place for what fuzzing found answered 500 (issue 10): a NUL character (`\\x00`, `\\u0000`)
or an unpaired surrogate (`\\ud800`) in a string, key, path or query parameter reached
PostgreSQL, which refuses both in text and jsonb; `NaN` in a JSON body is not JSON to
PostgreSQL either; a body nested hundreds deep blew pydantic's recursion limit. And a body
that is not JSON at all answered 422 "JSON decode error", where 400 is meant.

The middleware reads a JSON body (it is already bounded by `BodySizeLimit`, which runs first),
parses it once with these checks (`nurture.nesting.unstorable`, without recursion) and hands
the same bytes on; FastAPI parses them again, which costs well under a millisecond for the
bodies we accept. A form body (`application/x-www-form-urlencoded`) and the query string are
checked for the same characters. Answers are in the one error shape (`api.errors`):
400 `bad_request` for a body that is not JSON, 422 `invalid_request` with the path otherwise.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nurture.errors import Invalid
from nurture.nesting import MAX_JSON_DEPTH, text_problem, unstorable

# Bodies read as they stream (the CSV import enforces its own rules row by row), or read raw
# and checked by the provider's format (webhooks: `nurture.webhooks.base.parse_json`).
EXEMPT_PREFIXES = ("/v1/contacts/import", "/v1/webhooks/")


def _is_json(content_type: str | None) -> bool:
    """What FastAPI parses as JSON: no content type, application/json, application/*+json."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


class InputGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (problem := _query_problem(scope)) is not None:
            await _answer(send, 422, "invalid_request", [_problem(*problem)])
            return
        path: str = scope.get("path", "")
        if scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS") or path.startswith(
            EXEMPT_PREFIXES
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1") or None
        form = (content_type or "").lower().startswith("application/x-www-form-urlencoded")
        if not (form or _is_json(content_type)):
            await self.app(scope, receive, send)
            return
        body, more = await _read(receive)
        if body:
            answer = _form_problem(body) if form else _json_problem(body)
            if answer is not None:
                await _answer(send, *answer)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive() if more else {"type": "http.disconnect"}

        await self.app(scope, replay, send)


async def _read(receive: Receive) -> tuple[bytes, bool]:
    """The whole body; and whether a disconnect message is still to come from `receive`."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _json_problem(body: bytes) -> tuple[int, str, Any] | None:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return 400, "bad_request", f"the body is not UTF-8 text (byte {err.start})"
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as err:
        return (
            400,
            "bad_request",
            f"the body is not valid JSON: {err.msg} at line {err.lineno} "
            + (f"column {err.colno}"),
        )
    except ValueError as err:  # NaN, Infinity
        return 400, "bad_request", f"the body is not valid JSON: {err}"
    except RecursionError:
        return (
            422,
            "invalid_request",
            [_problem("body", f"nested more than {MAX_JSON_DEPTH} objects and arrays deep")],
        )
    if _plainly_storable(text):
        return None
    problem = unstorable(data, "body")
    if problem is not None:
        return 422, "invalid_request", [_problem(*problem)]
    return None


# A number that parses to infinity has an exponent or hundreds of digits (1e999).
_MAYBE_INFINITE = re.compile(r"\d[eE]|\d{300}")


def _plainly_storable(text: str) -> bool:
    """Whether the JSON `text` is seen from its characters alone to hold nothing `unstorable`
    looks for, so the walk over the parsed data (6 % of the API's py-spy samples on
    `POST /v1/events` in bench.run) is skipped. A NUL or an unpaired surrogate in a string
    can only come from a `\\u` escape (json.loads refuses a raw control character, and UTF-8
    text has no surrogates); no more than MAX_JSON_DEPTH brackets cannot nest deeper; a
    number without an exponent and with fewer than 300 digits is finite. A false alarm
    (these characters inside a string) only means the walk is done."""
    return (
        "\\u" not in text
        and text.count("{") + text.count("[") <= MAX_JSON_DEPTH
        and _MAYBE_INFINITE.search(text) is None
    )


def _form_problem(body: bytes) -> tuple[int, str, Any] | None:
    try:
        pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return 400, "bad_request", "the form body is not UTF-8 text"
    for name, value in pairs:
        for text in (name, value):
            if (problem := text_problem(text)) is not None:
                return 422, "invalid_request", [_problem(f"body.{_printable(name)}", problem)]
    return None


def _query_problem(scope: Scope) -> tuple[str, str] | None:
    query = scope.get("query_string", b"").decode("latin-1")
    # As Starlette reads it: bytes that are not UTF-8 become U+FFFD, which is harmless.
    for name, value in parse_qsl(query, keep_blank_values=True):
        for text in (name, value):
            if (problem := text_problem(text)) is not None:
                return f"query.{_printable(name)}", problem
    return None


async def storable_path(request: Request) -> None:
    """A dependency of every router: a path parameter with a NUL is refused before any route
    looks it up (422 `invalid` naming it, as a malformed contact reference is). Not in the
    middleware: which parameter a part of the path is, only routing knows."""
    for name, value in request.path_params.items():
        if name == "ref":
            continue  # a contact reference: api.contact_refs refuses it saying what is expected
        if isinstance(value, str) and (problem := text_problem(value)) is not None:
            raise Invalid(
                f"path parameter {name}: {problem}",
                detail=[_problem(f"path.{_printable(name)}", problem)],
            )


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\u0000")


def _problem(path: str, message: str) -> dict[str, str]:
    return {"path": path, "message": message}


async def _answer(send: Send, status: int, error: str, detail: Any) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
