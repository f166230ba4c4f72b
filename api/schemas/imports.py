"""CSV contact imports: progress while running, the report once done."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nurture.audience.imports import MAX_ERRORS
from nurture.db.models import ContactImport


class RowErrorOut(BaseModel):
    row: int = Field(description="as a spreadsheet numbers it: the header is row 1")
    message: str


class ImportOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b7a4a5e-4f63-4a55-9d3c-2f8f2f3f9c11",
                    "status": "completed",
                    "list_key": "newsletter",
                    "rows": 3,
                    "imported": 2,
                    "created": 1,
                    "updated": 1,
                    "errors": [{"row": 3, "message": "email: 'ada@' is not an email address"}],
                    "error_count": 1,
                    "enrollments_signalled": 1,
                    "enrollment_runs": ["import:0b7a4a5e-4f63-4a55-9d3c-2f8f2f3f9c11:welcome"],
                    "failure": None,
                    "started_at": "2026-11-24T10:00:00Z",
                    "updated_at": "2026-11-24T10:00:04Z",
                    "finished_at": "2026-11-24T10:00:04Z",
                }
            ]
        }
    )

    id: uuid.UUID
    status: Literal["running", "completed", "failed"]
    list_key: str | None = Field(description="the list every imported contact joined (`?list=`)")
    rows: int = Field(description="data rows read so far (blank lines not counted)")
    imported: int = Field(description="rows written")
    created: int = Field(description="contacts created")
    updated: int = Field(description="existing contacts updated")
    errors: list[RowErrorOut] = Field(description=f"refused rows, the first {MAX_ERRORS}")
    error_count: int = Field(description="all refused rows")
    enrollments_signalled: int = Field(
        description="in-flight enrollments told that their contact changed"
    )
    enrollment_runs: list[str] = Field(
        description="bulk enrollment runs (workflow ids) taking the contacts who joined the "
        "list into the journeys it triggers"
    )
    failure: str | None = Field(description="why a failed import stopped")
    started_at: datetime
    updated_at: datetime = Field(description="progress is written after each batch")
    finished_at: datetime | None

    @classmethod
    def of(cls, job: ContactImport) -> ImportOut:
        return cls(
            id=job.id,
            status=job.status,
            list_key=job.list_key,
            rows=job.rows,
            imported=job.imported,
            created=job.created,
            updated=job.updated,
            errors=[RowErrorOut(**error) for error in job.errors],
            error_count=job.error_count,
            enrollments_signalled=job.signalled,
            enrollment_runs=job.enrollment_runs,
            failure=job.failure,
            started_at=job.started_at,
            updated_at=job.updated_at,
            finished_at=job.finished_at,
        )
