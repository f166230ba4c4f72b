"""Enrollments that cannot die of their own history: a contact changed again and again while
it waits costs its enrollment one signal per reload, not one per change, and a wait whose
history grows anyway continues as new in the middle, keeping its deadline and its events."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from nurture.contracts import EnrollmentResult
from nurture.db.engine import SessionFactory
from nurture.db.models import EnrollmentStep
from nurture.journeys.enrollments import EnrollmentOptions, enroll
from tests.support import (
    finish,
    make_contact,
    ok,
    publish_journey,
    reach_step,
    recorded_path,
    signal_event,
)
from worker import build_worker

WAIT_FOR_ORDER: dict[str, Any] = {
    "key": "order-wait",
    "name": "Waits 30 days for an order",
    "trigger": {"type": "api"},
    "goal": {"criteria": {"type": "field", "field": "plan", "op": "eq", "value": "gold"}},
    "start": "wait_order",
    "steps": {
        "wait_order": {
            "type": "wait_for",
            "event": {"type": "custom", "name": "order"},
            "timeout": "30d",
            "on_event": "thanks",
            "on_timeout": "nudge",
        },
        "thanks": {"type": "update_contact", "add_tags": ["ordered"]},
        "nudge": {"type": "update_contact", "add_tags": ["nudged"]},
    },
}


async def _continued_as_new(handle: WorkflowHandle[Any, Any], first_run: str) -> None:
    """Wait until the workflow runs in a run after `first_run` (it handles the signals first)."""
    async with asyncio.timeout(15):
        while True:
            if (await handle.describe()).run_id != first_run:
                return
            await asyncio.sleep(0.05)


async def _signals(handle: WorkflowHandle[Any, Any], name: str) -> int:
    history = await handle.fetch_history()
    return sum(
        1
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        and event.workflow_execution_signaled_event_attributes.signal_name == name
    )


async def test_many_changes_during_a_wait_are_one_signal_until_the_contact_is_reloaded(
    sessions: SessionFactory,
    client: Client,
    task_queue: str,
    env: WorkflowEnvironment,
    api: httpx.AsyncClient,
) -> None:
    await publish_journey(sessions, WAIT_FOR_ORDER)
    contact_id = await make_contact(sessions, external_id="ivy", fields={"plan": "free"})
    options = EnrollmentOptions(task_queue)
    # No workflow cache, hence no sticky queue the next worker could not take over (the
    # time-skipping server never hands a dead worker's sticky tasks to another one).
    async with build_worker(client, sessions, task_queue, max_cached_workflows=0):
        enrollment = await enroll(sessions, client, options, "order-wait", contact_id)
        handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
        await reach_step(handle, "wait_order")
    # No worker now: nothing reloads the contact, so every change after the first finds the
    # enrollment already told.
    for n in range(30):
        ok(await api.patch("/v1/contacts/ivy", json={"fields": {"visits": n}}))
    assert await _signals(handle, "contact_changed") == 1

    async with build_worker(client, sessions, task_queue):
        await handle.describe()  # the worker reloads the contact: the next change signals again
        await reach_step(handle, "wait_order")
        ok(await api.patch("/v1/contacts/ivy", json={"fields": {"plan": "gold"}}))
        result = await finish(env, handle)

    assert (result.status, result.reason) == ("exited", "goal_met")
    assert await _signals(handle, "contact_changed") == 2
    # The goal was met during the wait: the wait is left then, for that reason, in the result
    # and in its row (the timeline), not left open as if the contact still waited there.
    [left] = result.path
    assert (left.step, left.outcome) == ("wait_order", "exited: goal_met")
    assert left.left_at is not None
    async with sessions() as session:
        [row] = await session.scalars(
            select(EnrollmentStep).where(col(EnrollmentStep.enrollment_id) == enrollment.id)
        )
    assert (row.step_id, row.outcome, row.left_at) == (
        "wait_order",
        "exited: goal_met",
        left.left_at,
    )


async def test_a_wait_whose_history_grows_continues_as_new_and_still_gets_its_event(
    sessions: SessionFactory, client: Client, task_queue: str, env: WorkflowEnvironment
) -> None:
    await publish_journey(sessions, WAIT_FOR_ORDER)
    contact_id = await make_contact(sessions, fields={"plan": "free"})
    options = EnrollmentOptions(task_queue, max_history_events=60)
    async with build_worker(client, sessions, task_queue):
        enrollment = await enroll(sessions, client, options, "order-wait", contact_id)
        handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
        await reach_step(handle, "wait_order")
        first_run = (await handle.describe()).run_id
        # Signals straight to the workflow, as a flood of changes and stray events would.
        for n in range(40):
            await handle.signal("contact_changed")
            await signal_event(handle, kind="custom", name="pageview", event_id=f"pv-{n}")
        await _continued_as_new(handle, first_run)  # mid-wait
        await reach_step(handle, "wait_order")
        await signal_event(handle, kind="custom", name="order", event_id="order-1")
        result = await finish(env, handle)

    assert result.status == "completed"
    assert [entry.step for entry in result.path] == ["wait_order", "thanks"]
    assert result.path[0].outcome == "event order-1"
    assert await recorded_path(sessions, enrollment.id) == ["wait_order", "thanks"]


@pytest.mark.usefixtures("worker")
async def test_a_resumed_wait_keeps_its_deadline(
    sessions: SessionFactory, client: Client, task_queue: str, env: WorkflowEnvironment
) -> None:
    await publish_journey(sessions, WAIT_FOR_ORDER)
    contact_id = await make_contact(sessions, fields={"plan": "free"})
    options = EnrollmentOptions(task_queue, max_history_events=60)
    enrollment = await enroll(sessions, client, options, "order-wait", contact_id)
    handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
    await reach_step(handle, "wait_order")
    first_run = (await handle.describe()).run_id
    await env.sleep(timedelta(days=10))  # ten days into the wait, the history grows
    for _ in range(40):
        await handle.signal("contact_changed")
    await _continued_as_new(handle, first_run)
    result = await finish(env, handle)

    assert [entry.step for entry in result.path] == ["wait_order", "nudge"]
    waited = result.path[0].left_at - result.path[0].entered_at  # type: ignore[operator]
    assert timedelta(days=30) <= waited < timedelta(days=30, minutes=1), waited  # not 40
