"""One error shape for every failure: {"error": <code>, "detail": <message or list>}."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nurture.errors import NurtureError

logger = logging.getLogger("nurture.api")


def error_response(status: int, error: str, detail: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    # FastAPI prefixes "body"/"query"/"path": keep it for those, it says where to look.
    return ".".join(str(part) for part in loc)


BEARER_CHALLENGE = 'Bearer realm="nurture"'


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the OpenAPI document lists for the paths that `path` matches."""
    templates: list[tuple[re.Pattern[str], int, list[str]]] | None = getattr(
        app.state, "allowed_methods", None
    )
    if templates is None:
        templates = []
        for template, operations in app.openapi().get("paths", {}).items():
            regex = "/".join(
                "[^/]+" if part.startswith("{") else re.escape(part) for part in template.split("/")
            )
            methods = [m.upper() for m in operations if m.upper() in _METHODS]
            templates.append((re.compile(f"^{regex}$"), template.count("{"), methods))
        app.state.allowed_methods = templates
    # The most specific paths that match: `/v1/contacts/import` is the import (POST), not the
    # contact whose external id is "import", as the document describes it.
    matching = [
        (params, methods) for compiled, params, methods in templates if compiled.match(path)
    ]
    fewest = min((params for params, _ in matching), default=0)
    return sorted({m for params, methods in matching if params == fewest for m in methods})


_METHODS = {"GET", "PUT", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS"}


def error_detail(exc: NurtureError) -> Any:
    """The `detail` of a domain error's answer: its structured detail, else its message."""
    return exc.detail if exc.detail is not None else exc.message


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NurtureError)
    async def nurture_error(request: Request, exc: NurtureError) -> JSONResponse:
        detail = error_detail(exc)
        body = {"error": exc.error, "detail": detail}
        if exc.detail is not None:
            body["message"] = exc.message
        headers: dict[str, str] | None = None
        if exc.status_code == 401:  # RFC 9110: a 401 says how to authenticate
            headers = {"WWW-Authenticate": getattr(exc, "challenge", BEARER_CHALLENGE)}
        elif exc.status_code == 503:  # a dependency away for a moment: say when to try again
            headers = {"Retry-After": "5"}
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"path": _location(e["loc"]), "message": str(e["msg"]).removeprefix("Value error, ")}
            for e in exc.errors()
        ]
        return error_response(422, "invalid_request", problems)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the one route it tried; a path has several.
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        response = error_response(
            exc.status_code, codes.get(exc.status_code, "http_error"), exc.detail
        )
        response.headers.update(headers)
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "an unexpected error occurred; see the logs")


# Streamed, never held in memory, and far larger than any JSON body: the CSV import reads
# its body incrementally and enforces its own limit (nurture.audience.imports.MAX_IMPORT_BYTES). Only
# this method and exact path are exempt; `PUT /v1/contacts/import` (a contact whose external
# id is "import") keeps the limit.
UNLIMITED = frozenset({("POST", "/v1/contacts/import")})


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope.get("method"), scope.get("path")) in UNLIMITED:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {"error": "payload_too_large", "detail": f"request body over {self.max_bytes} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
