"""The error shape every route answers with, and documented error responses for routes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class Problem(BaseModel):
    path: str = Field(description="where: a dotted path into the request or the definition")
    message: str


class ErrorOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": "not_found", "detail": "no journey 'welcome'"},
                {
                    "error": "invalid",
                    "detail": [
                        {"path": "steps.intro.template", "message": "no email template 'intro'"}
                    ],
                    "message": "content is not ready: create the missing templates first",
                },
            ]
        }
    )

    error: str = Field(
        description="a stable code: unauthorized, not_found, conflict, invalid, invalid_request, "
        "payload_too_large, unavailable, internal_error"
    )
    detail: str | list[Problem] | list[str] = Field(
        description="a message, or every problem found (`{path, message}`), or the unknown ids"
    )
    message: str | None = Field(default=None, description="a summary, when detail is a list")


BODY_TOO_LARGE = "the request body is over the size limit (settings.max_body_bytes)"


def error_responses(described: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for a route's errors, all in the `ErrorOut` shape; 401 and 422 are
    always there, e.g. `error_responses({404: "no such journey", 413: BODY_TOO_LARGE})`."""
    codes = {
        401: "missing, invalid or revoked API key",
        422: "the request is invalid: `detail` lists every problem as `{path, message}`",
        **(described or {}),
    }
    return {code: {"model": ErrorOut, "description": text} for code, text in sorted(codes.items())}


# Integers in paths and queries are bounded so that any value a client sends fits the
# PostgreSQL integer it is compared with: a larger one was a 500 (asyncpg cannot send it).
PG_INT_MAX = 2_147_483_647
Offset = Annotated[int, Query(ge=0, le=PG_INT_MAX, description="items to skip")]


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_text(value: Any) -> Any:
    """A date in a query string or a JSON body is written as one: pydantic would also read a
    number (0, "0.5") as seconds since 1970, which no one means and the OpenAPI document does
    not say (a date-time is a string there)."""
    if isinstance(value, date):  # given by Python code, not read from a request
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError("an ISO 8601 date (2026-12-01) or date and time (2026-12-01T09:00Z)")
    return value


IsoDate = Annotated[date, BeforeValidator(_iso_text)]
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_text)]
