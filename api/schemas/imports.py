"""CSV contact imports: the summary an import answers with."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from nurture.imports import MAX_ERRORS, ImportResult


class RowErrorOut(BaseModel):
    row: int = Field(description="as a spreadsheet numbers it: the header is row 1")
    message: str


class ImportOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "rows": 3,
                    "imported": 2,
                    "created": 1,
                    "updated": 1,
                    "errors": [{"row": 3, "message": "email: 'ada@' is not an email address"}],
                    "error_count": 1,
                }
            ]
        }
    )

    rows: int = Field(description="data rows read (blank lines not counted)")
    imported: int = Field(description="rows written")
    created: int = Field(description="contacts created")
    updated: int = Field(description="existing contacts updated")
    errors: list[RowErrorOut] = Field(description=f"refused rows, the first {MAX_ERRORS}")
    error_count: int = Field(description="all refused rows")

    @classmethod
    def of(cls, result: ImportResult) -> ImportOut:
        return cls(
            rows=result.rows,
            imported=result.imported,
            created=result.created,
            updated=result.updated,
            errors=[RowErrorOut(row=e.row, message=e.message) for e in result.errors],
            error_count=result.error_count,
        )
