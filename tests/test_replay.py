"""Determinism guard: saved histories of real enrollments must replay on the current code.

A change to the interpreter that would make a running enrollment take a different path fails
here; such changes need `workflow.patched(...)`. To add histories after a deliberate, patched
change, run `NURTURE_RECORD_HISTORIES=1 pytest tests/test_replay.py` and commit the new files
next to the old ones (never replace old ones: they stand for workflows still running).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from nurture.db.engine import SessionFactory
from tests.support import (
    example,
    finish,
    make_contact,
    make_lists,
    publish_journey,
    reach_step,
    signal_event,
    start,
)
from workflows.enrollment import JourneyEnrollment

HISTORIES = Path(__file__).resolve().parent / "histories"


def replayer() -> Replayer:
    return Replayer(workflows=[JourneyEnrollment], data_converter=pydantic_data_converter)


def saved_histories() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


def test_there_are_saved_histories() -> None:
    assert len(saved_histories()) >= 3


@pytest.mark.parametrize("path", saved_histories(), ids=lambda p: p.stem)
async def test_saved_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    await replayer().replay_workflow(history)


@pytest.mark.usefixtures("worker")
async def test_fresh_histories_replay(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    """Run the seed journeys now; their histories replay (and can be recorded for later)."""
    await make_lists(sessions, "paid-customers")
    for name in ("benchmark-welcome", "hubspot-nurture-goal", "register-coupon"):
        await publish_journey(sessions, example(name))

    recorded = {}
    clicker = await make_contact(sessions)
    _, handle = await start(sessions, client, task_queue, "benchmark-welcome", clicker)
    await reach_step(handle, "wait_1d")
    await signal_event(handle, event_id="click-1", kind="click", step="welcome", link="purchase")
    await signal_event(handle, event_id="click-1", kind="click", step="welcome", link="purchase")
    await finish(env, handle)
    recorded["benchmark-clicked"] = handle

    lead = await make_contact(sessions, fields={"lifecycle_stage": "lead"})
    _, handle = await start(sessions, client, task_queue, "hubspot-nurture-goal", lead)
    await reach_step(handle, "wait_2d")
    await signal_event(handle, event_id="purchase-1", kind="custom", name="purchase")
    await finish(env, handle)
    recorded["hubspot-goal-met"] = handle

    registered = await make_contact(sessions)
    _, handle = await start(sessions, client, task_queue, "register-coupon", registered)
    await finish(env, handle)
    recorded["register-coupon-timeouts"] = handle

    for name, handle in recorded.items():
        history = await handle.fetch_history()
        await replayer().replay_workflow(history)
        if os.environ.get("NURTURE_RECORD_HISTORIES"):
            (HISTORIES / f"{name}.json").write_text(history.to_json())
