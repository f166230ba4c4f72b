"""A CSV import as a job: a progress row, and everything a change of contacts sets off.

`nurture.audience.imports` reads and writes the rows; around it, this module:

- keeps a `contact_imports` row with the counts so far, written after each batch, so
  `GET /v1/imports/{id}` shows a long import's progress while the file is still uploading
  (the client can choose the id up front), and the report once it is done;
- announces its changes (`nurture.audience.changes`) in bulk rather than one by one: tells the
  in-flight enrollments of each updated contact (`contact_changed`), batch by batch, so goals
  and waits see the imported values at once;
- once the file is read, starts the journeys that joining the list triggers, for the contacts
  who joined it through this import, as one resumable BulkEnroll run per journey (an import
  of 100,000 rows is not enrolled inside an HTTP request);
- asks the SegmentWatch for a sweep now, so contacts the import put into a segment enter
  journeys that start on it within moments.

An import that fails half-way (a bad header is refused before anything is written) keeps
what its finished batches wrote, and its list journeys are started for those contacts too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterable
from dataclasses import asdict

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.service import RPCError

from nurture.audience.changes import mark_announced
from nurture.audience.imports import Batch, ImportResult, find_list_id, import_contacts
from nurture.audience.segments.sweeps import request_sweep
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    ContactImport,
    utcnow,
)
from nurture.errors import Conflict, NotFound, NurtureError
from nurture.journeys.bulk import start_bulk_enrollment
from nurture.journeys.enrollments import (
    TEMPORAL_UNREACHABLE,
    EnrollmentOptions,
    tell_contact_changed,
)
from nurture.journeys.triggers import live_journeys

logger = logging.getLogger(__name__)

_SIGNAL_CONCURRENCY = 20


async def run_import(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    body: AsyncIterable[bytes],
    list_key: str | None = None,
    import_id: uuid.UUID | None = None,
) -> ContactImport:
    """Import the CSV in `body` as a job (see the module doc); the finished job row."""
    if list_key is not None:
        await find_list_id(sessions, list_key)  # refused before a job row exists
    job = await _open(sessions, import_id or uuid.uuid4(), list_key)
    signalled = 0
    change_ids: list[int] = []  # of the batches whose enrollments were all told

    async def after_batch(result: ImportResult, batch: Batch) -> None:
        nonlocal signalled
        told, everyone = await _tell_enrollments(sessions, client, batch.updated)
        signalled += told
        if everyone:  # the rest stay due: the relay announces them one by one
            change_ids.extend(batch.change_ids)
        await _save(sessions, job.id, result, signalled=signalled)

    try:
        result = await import_contacts(
            sessions, body, list_key, on_batch=after_batch, source=f"import:{job.id}"
        )
    except BaseException as err:
        failure = err.message if isinstance(err, NurtureError) else type(err).__name__
        await _save(sessions, job.id, None, status="failed", failure=failure)
        await _set_off(sessions, client, options, job, change_ids)
        raise
    runs = await _set_off(sessions, client, options, job, change_ids)
    return await _save(
        sessions, job.id, result, signalled=signalled, status="completed", enrollment_runs=runs
    )


async def get_import(sessions: SessionFactory, import_id: uuid.UUID) -> ContactImport:
    async with sessions() as session:
        job = await session.get(ContactImport, import_id)
    if job is None:
        raise NotFound(f"no import {import_id}")
    return job


async def list_imports(sessions: SessionFactory, limit: int = 20) -> list[ContactImport]:
    async with sessions() as session:
        rows = await session.scalars(
            select(ContactImport).order_by(col(ContactImport.started_at).desc()).limit(limit)
        )
        return list(rows)


async def _open(
    sessions: SessionFactory, import_id: uuid.UUID, list_key: str | None
) -> ContactImport:
    job = ContactImport(id=import_id, list_key=list_key)
    try:
        async with sessions.begin() as session:
            session.add(job)
    except IntegrityError:
        raise Conflict(f"import {import_id} already exists: choose a new import_id") from None
    return job


async def _save(
    sessions: SessionFactory,
    import_id: uuid.UUID,
    result: ImportResult | None,
    **values: object,
) -> ContactImport:
    """Write the counts so far (and any other column given); the row as saved."""
    if result is not None:
        values |= {
            "rows": result.rows,
            "imported": result.imported,
            "created": result.created,
            "updated": result.updated,
            "error_count": result.error_count,
            "errors": [asdict(error) for error in result.errors],
        }
    if values.get("status") in ("completed", "failed"):
        values["finished_at"] = utcnow()
    async with sessions.begin() as session:
        await session.execute(
            sa.update(ContactImport)
            .where(col(ContactImport.id) == import_id)
            .values(updated_at=utcnow(), **values)
        )
        job = await session.get(ContactImport, import_id, populate_existing=True)
    assert job is not None
    return job


async def _tell_enrollments(
    sessions: SessionFactory, client: Client, contact_ids: list[uuid.UUID]
) -> tuple[int, bool]:
    """Signal `contact_changed` to the in-flight enrollments of these contacts; how many, and
    whether all of them were told. Temporal being away does not fail the import: the changes
    of an import that could not tell everyone are left to the relay (`_set_off`)."""
    if not contact_ids:
        return 0, True
    try:
        told, failed = await tell_contact_changed(
            sessions, client, contact_ids, concurrency=_SIGNAL_CONCURRENCY
        )
    except TEMPORAL_UNREACHABLE as err:  # Postgres or Temporal gone in the middle
        logger.warning("import: enrollments not told of their contacts' changes: %s", err)
        return 0, False
    if failed:
        logger.warning("import: %d enrollments not told of their contact's change", len(failed))
    return told, not failed


async def _set_off(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    job: ContactImport,
    change_ids: list[int],
) -> list[str]:
    """Announce the import's changes in bulk: start the list's journeys for its new members,
    ask for a segment sweep (the enrollments were told batch by batch), then mark the change
    records announced. The ids of the BulkEnroll runs started. Temporal being away is logged,
    not raised: the contacts are imported, and the relay announces each change once the
    import's lease on them has run out."""
    runs: list[str] = []
    try:
        for journey_key in await _list_journeys(sessions, job.list_key):
            bulk = await start_bulk_enrollment(
                sessions,
                client,
                options.task_queue,
                journey_key,
                list_key=job.list_key,
                workflow_id=f"import:{job.id}:{journey_key}",
                joined_since=job.started_at,
            )
            runs.append(bulk.workflow_id)
        await request_sweep(client, options.task_queue)
    except (RPCError, RuntimeError) as err:
        logger.warning("import %s: journeys not started: %s", job.id, err)
        return runs
    await mark_announced(sessions, change_ids)
    return runs


async def _list_journeys(sessions: SessionFactory, list_key: str | None) -> list[str]:
    if list_key is None:
        return []
    async with sessions() as session:
        return [journey.key for journey in await live_journeys(session, "list_joined", list_key)]
