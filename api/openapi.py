"""The OpenAPI document, saying what the API really answers.

FastAPI documents a 422 as `HTTPValidationError` (`{"detail": [{loc, msg, type}]}`), but every
error here has the one shape `ErrorOut` (`api.errors`); and errors that every operation can
answer (a body that is not JSON, a missing key, an unknown id in the path, a body over the
size limit) were documented on some operations and not others. Fuzzing against the document
(schemathesis, tests/test_fuzzing.py) found ~30 operations answering what they did not
document. Here the document is generated once, then completed from what each operation takes:

- every 422 is `ErrorOut`; operations with parameters or a body document one;
- an operation with a JSON body: 400 (not JSON), 413 (over `max_body_bytes`);
- an operation that needs an API key: 401, with its `WWW-Authenticate` header;
- an operation with path parameters: 404 (nothing has that key or id).

What a route documents itself (its own wording of a 404, say) is kept.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
_FASTAPI_ERRORS = ("HTTPValidationError", "ValidationError")
_METHODS = ("get", "put", "post", "patch", "delete", "head", "options")

GENERIC = {
    "400": "the body is not JSON (or not UTF-8 text)",
    "401": "missing, invalid or revoked API key",
    "404": "nothing has the key or id in the path",
    "413": "the request body is over the size limit (settings.max_body_bytes)",
    "422": "the request is invalid: `detail` lists every problem as `{path, message}`",
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """Document the real error responses of every operation (see the module doc)."""
    for operations in document.get("paths", {}).values():
        for method in _METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            parameters = operation.get("parameters", [])
            wanted: list[str] = []
            if operation.get("requestBody"):
                wanted += ["400", "413", "422"]
            if parameters:
                wanted.append("422")
            if operation.get("security"):
                wanted.append("401")
            if any(p.get("in") == "path" for p in parameters):
                wanted.append("404")
            for code in wanted:
                responses.setdefault(code, _error(GENERIC[code]))
            for code, response in responses.items():
                content = response.get("content") or {}
                if code.startswith(("4", "5")) and (not content or "application/json" in content):
                    # FastAPI's own 422 (HTTPValidationError) or a route's plain description;
                    # a page for people (tracking links: text/html) is left as it is.
                    response["content"] = {"application/json": {"schema": ERROR_REF}}
            if "401" in responses:
                responses["401"].setdefault("headers", {})["WWW-Authenticate"] = {
                    "description": 'how to authenticate: `Bearer realm="nurture"`',
                    "schema": {"type": "string"},
                }
    schemas = document.get("components", {}).get("schemas", {})
    for name in _FASTAPI_ERRORS:
        schemas.pop(name, None)
    return document


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    openapi_version=app.openapi_version,
                    description=app.description,
                    routes=app.routes,
                    tags=app.openapi_tags,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
