"""An enrollment's path written in one statement.

The steps entered since the last write (`StepEntered`, in order) become one statement: the row
of the step before the first of them is closed (its outcome and when it was left), their rows
are inserted, each closed by the one after it, and the last becomes the enrollment's current
step. Nothing is written for an enrollment that is gone (erased with its contact). A retry
writes the same rows with the same values: an inserted row that exists already only takes its
closing (left_at, outcome), which is the same again.

One round trip where the statement-per-row writes took two per step and three more for the
transaction around them (docs/benchmarks.md, "Fewer round trips on the worker").
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from nurture.contracts import EnrollmentFinished, StepEntered, StepOutcome
from nurture.db.models import ACTIVE_ENROLLMENT_STATUSES, EnrollmentStatus

# $1 the enrollment; $2-$5 the rows of earlier writes closed now (the step before the first
# new one); $6-$11 the new rows. What follows these CTEs updates the enrollment itself.
PATH_CTES = """
WITH live AS (
    SELECT id FROM enrollments WHERE id = $1
), closed AS (
    UPDATE enrollment_steps s SET left_at = c.left_at, outcome = c.outcome
    FROM unnest($2::text[], $3::int[], $4::timestamptz[], $5::text[])
        AS c(step_id, visit, left_at, outcome)
    WHERE s.enrollment_id = $1 AND s.step_id = c.step_id AND s.visit = c.visit
), opened AS (
    INSERT INTO enrollment_steps
        (enrollment_id, step_id, visit, step_type, entered_at, left_at, outcome)
    SELECT live.id, r.step_id, r.visit, r.step_type, r.entered_at, r.left_at, r.outcome
    FROM live, unnest(
        $6::text[], $7::int[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::text[]
    ) WITH ORDINALITY AS r(step_id, visit, step_type, entered_at, left_at, outcome, n)
    ORDER BY r.n
    ON CONFLICT (enrollment_id, step_id, visit) DO UPDATE
        SET left_at = EXCLUDED.left_at, outcome = EXCLUDED.outcome
        WHERE EXCLUDED.left_at IS NOT NULL
)
"""
_ACTIVE = ", ".join(f"'{s.value}'" for s in ACTIVE_ENROLLMENT_STATUSES)

# $12: the last step entered (NULL: none), the enrollment's current step from now; $13: when.
CURRENT_STEP = f"""UPDATE enrollments SET current_step = $12,
    status = '{EnrollmentStatus.ACTIVE.value}', updated_at = $13
WHERE id = $1 AND $12::text IS NOT NULL AND status IN ({_ACTIVE})
"""

PROGRESS_STATEMENT = PATH_CTES + CURRENT_STEP

# $12 the last step entered (NULL: none), $13 the end, $14-$16 status, reason and detail.
FINISH_STATEMENT = (
    PATH_CTES
    + f"""UPDATE enrollments SET
    current_step = CASE WHEN $12::text IS NOT NULL AND status IN ({_ACTIVE})
        THEN $12 ELSE current_step END,
    status = $14, exit_reason = $15, detail = $16, updated_at = $13, ended_at = $13
WHERE id = $1
"""
)


def path_arguments(
    enrollment_id: uuid.UUID,
    entered: Sequence[StepEntered],
    left: tuple[StepOutcome, datetime] | None = None,
) -> list[Any]:
    """$1-$11 of the statements for these steps; `left`: the last step left, and when (an
    enrollment's end)."""
    rows: list[list[Any]] = []
    index: dict[tuple[str, int], list[Any]] = {}
    closes: list[tuple[str, int, datetime, str]] = []
    for step in entered:
        done = step.previous
        if done is not None:
            row = index.get((done.step, done.visit))
            if row is not None:  # entered in this write: inserted closed
                row[4], row[5] = step.at, done.outcome
            else:  # entered in an earlier write: closed by an update
                closes.append((done.step, done.visit, step.at, done.outcome))
        row = [step.step, step.visit, step.step_type, step.at, None, None]
        rows.append(row)
        index[(step.step, step.visit)] = row
    if left is not None:
        done, at = left
        row = index.get((done.step, done.visit))
        if row is not None:
            row[4], row[5] = at, done.outcome
        else:
            closes.append((done.step, done.visit, at, done.outcome))
    return [enrollment_id, *_columns(closes, 4), *_columns(rows, 6)]


def progress_arguments(enrollment_id: uuid.UUID, entered: Sequence[StepEntered]) -> list[Any]:
    """$1-$13 of `PROGRESS_STATEMENT` (or of a statement made of `PATH_CTES` and
    `CURRENT_STEP`)."""
    last = entered[-1] if entered else None
    return [
        *path_arguments(enrollment_id, entered),
        last.step if last else None,
        last.at if last else None,
    ]


def finish_arguments(finished: EnrollmentFinished) -> list[Any]:
    """The parameters of `FINISH_STATEMENT`."""
    left = (finished.last, finished.at) if finished.last is not None else None
    return [
        *path_arguments(finished.enrollment_id, finished.progress, left),
        finished.progress[-1].step if finished.progress else None,
        finished.at,
        finished.status,
        finished.reason,
        finished.detail,
    ]


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column: what `unnest` takes."""
    return [[row[i] for row in rows] for i in range(width)]


async def write_progress(
    connection: Any, enrollment_id: uuid.UUID, entered: Sequence[StepEntered]
) -> None:
    """On asyncpg's own connection (`nurture.db.lean.driver_connection`): one statement,
    atomic by itself."""
    if entered:
        await connection.execute(PROGRESS_STATEMENT, *progress_arguments(enrollment_id, entered))


async def record_progress(
    session: AsyncSession, enrollment_id: uuid.UUID, entered: Sequence[StepEntered]
) -> None:
    """The same statement inside `session`'s transaction, with the step's own work."""
    if entered:
        connection = await session.connection()
        await connection.exec_driver_sql(
            PROGRESS_STATEMENT, tuple(progress_arguments(enrollment_id, entered))
        )
