"""CSV contact import: the file is the request body, streamed and imported batch by batch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.deps import ResourcesDep
from api.schemas.common import error_responses
from api.schemas.imports import ImportOut
from nurture.imports import BATCH_ROWS, MAX_IMPORT_BYTES, import_contacts

router = APIRouter(prefix="/contacts", tags=["contacts"])


@router.post(
    "/import",
    response_model=ImportOut,
    summary="Import contacts from a CSV file",
    description=f"""The body is the CSV file itself (`Content-Type: text/csv`, UTF-8), read as
it streams: files of any size up to {MAX_IMPORT_BYTES} bytes (the usual body-size limit does
not apply here).

The header row names the columns: `external_id`, `email`, `phone`, `time_zone`, `tags`
(separated by `;`), `consent_email` and `consent_sms` (`granted` or `revoked`); any other
column is a custom field of that name. Each row updates the contact with its external_id, else
the contact with its email, else creates one; empty cells change nothing, fields and consent
are merged, tags are added. With `?list=<key>`, every imported contact joins that list (the
journeys the list triggers are not started by an import).

Rows are written in batches of {BATCH_ROWS}, each in its own transaction. A bad row (say, an
invalid email) is reported in `errors` with its row number, and the others are imported. A bad
header refuses the whole file (422).""",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "external_id,email,tags,plan\ncrm-1,ada@example.com,vip;beta,pro\n",
                }
            },
        }
    },
    responses=error_responses(
        {
            404: "no list with the key given in `list`",
            413: f"the file is over {MAX_IMPORT_BYTES} bytes (rows before that were imported)",
            422: "the header is invalid or the file is empty; nothing was imported",
        }
    ),
)
async def import_csv(
    request: Request,
    resources: ResourcesDep,
    list_key: Annotated[
        str | None,
        Query(alias="list", min_length=1, max_length=64, description="add everyone to this list"),
    ] = None,
) -> ImportOut:
    result = await import_contacts(resources.sessions, request.stream(), list_key)
    return ImportOut.of(result)
