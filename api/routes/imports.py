"""CSV contact import: the file is the request body, streamed and imported batch by batch."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.deps import ResourcesDep
from api.schemas.common import error_responses
from api.schemas.imports import ImportOut
from nurture.audience.import_jobs import get_import, list_imports, run_import
from nurture.audience.imports import BATCH_ROWS, MAX_IMPORT_BYTES

router = APIRouter(tags=["contacts"])


@router.post(
    "/contacts/import",
    response_model=ImportOut,
    summary="Import contacts from a CSV file",
    description=f"""The body is the CSV file itself (`Content-Type: text/csv`, UTF-8), read as
it streams: files of any size up to {MAX_IMPORT_BYTES} bytes (the usual body-size limit does
not apply here).

The header row names the columns: `external_id`, `email`, `phone`, `time_zone`, `tags`
(separated by `;`), `consent_email` and `consent_sms` (`granted` or `revoked`); any other
column is a custom field of that name. Each row updates the contact with its external_id, else
the contact with its email, else creates one; empty cells change nothing, fields and consent
are merged, tags are added. With `?list=<key>`, every imported contact joins that list, and
the journeys that joining it starts are started for the contacts who joined through this
import (one bulk enrollment run per journey, listed in `enrollment_runs`).

Rows are written in batches of {BATCH_ROWS}, each in its own transaction; after each batch the
in-flight enrollments of updated contacts are told of the change, and the progress is saved:
`GET /v1/imports/{{id}}` shows it while the upload runs (choose the id with `?import_id=`).
Once the file is read, segments are re-checked, so journeys that start on entering a segment
start for the contacts the import put in it. A bad row (say, an invalid email) is reported in
`errors` with its row number, and the others are imported. A bad header refuses the whole
file (422).""",
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
            409: "an import with this `import_id` already exists",
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
    import_id: Annotated[
        uuid.UUID | None,
        Query(description="your id for this import, to follow its progress while it runs"),
    ] = None,
) -> ImportOut:
    job = await run_import(
        resources.sessions,
        resources.temporal,
        resources.enrollment_options,
        request.stream(),
        list_key,
        import_id,
    )
    return ImportOut.of(job)


@router.get(
    "/imports/{import_id}",
    response_model=ImportOut,
    summary="An import's progress, or its report once done",
    responses=error_responses({404: "no import with this id"}),
)
async def get_contact_import(import_id: uuid.UUID, resources: ResourcesDep) -> ImportOut:
    return ImportOut.of(await get_import(resources.sessions, import_id))


@router.get(
    "/imports",
    response_model=list[ImportOut],
    summary="Recent imports, newest first",
)
async def list_contact_imports(
    resources: ResourcesDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> list[ImportOut]:
    return [ImportOut.of(job) for job in await list_imports(resources.sessions, limit)]
