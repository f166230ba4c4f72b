"""Pause and resume reach every enrollment of a journey through ONE Temporal batch operation
over a visibility query, not a signal per enrollment from the caller (issue 11, item 5).

Needs the real dev server (batch operations and visibility; the time-skipping test server has
neither, and there pause and resume signal one by one: tests/test_api_journeys.py). How long a
batch takes for 100,000 enrollments is measured by `python -m bench.broadcast`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ListBatchOperationsRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from nurture.binaries import find_binary
from nurture.db.engine import SessionFactory
from nurture.journeys import lifecycle
from nurture.journeys.batch_signals import journey_query
from nurture.journeys.enrollments import EnrollmentOptions, enroll
from nurture.tracing import dev_server_flags
from tests.support import make_contact, publish_journey
from worker import build_worker

pytestmark = pytest.mark.usefixtures("clean_database")

HOLD: dict[str, Any] = {
    "key": "batch-hold",
    "name": "Held an hour",
    "start": "sleep",
    "steps": {"sleep": {"type": "wait", "duration": "1h"}},
}
CONTACTS = 30


@pytest.fixture(scope="module")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=find_binary("temporal"),
        dev_server_extra_args=[*dev_server_flags(), "--sqlite-pragma", "journal_mode=wal"],
    ) as env:
        yield env


async def signals_named(client: Client, workflow_id: str, name: str) -> int:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return sum(
        1
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        and e.workflow_execution_signaled_event_attributes.signal_name == name
    )


async def test_pause_and_resume_reach_every_enrollment_by_one_batch(
    dev_server: WorkflowEnvironment,
    sessions: SessionFactory,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No one-by-one pass over recent enrollments: what is reached, the batch reached.
    monkeypatch.setattr(lifecycle, "VISIBILITY_LAG", timedelta(0))
    client = dev_server.client
    await publish_journey(sessions, HOLD)
    options = EnrollmentOptions(task_queue=task_queue)
    async with build_worker(client, sessions, task_queue):
        enrolled = [
            await enroll(sessions, client, options, "batch-hold", await make_contact(sessions))
            for _ in range(CONTACTS)
        ]
        for _ in range(300):  # visibility catches up within moments
            if (await client.count_workflows(journey_query("batch-hold"))).count == CONTACTS:
                break
            await asyncio.sleep(0.2)

        paused = await lifecycle.pause(sessions, client, "batch-hold")
        paused_signals = [await signals_named(client, e.workflow_id, "pause") for e in enrolled]
        resumed = await lifecycle.resume(sessions, client, "batch-hold")
        resumed_signals = [await signals_named(client, e.workflow_id, "resume") for e in enrolled]
        batches = await client.workflow_service.list_batch_operations(
            ListBatchOperationsRequest(namespace=client.namespace)
        )
        for e in enrolled:
            await client.get_workflow_handle(e.workflow_id).terminate("test over")

    assert (paused.signalled, resumed.signalled) == (CONTACTS, CONTACTS)
    assert paused_signals == [1] * CONTACTS
    assert resumed_signals == [1] * CONTACTS
    ours = [b.job_id for b in batches.operation_info if "batch-hold" in b.job_id]
    assert sorted(job.split("-")[1] for job in ours) == ["pause", "resume"]
