"""Determinism guard: saved histories of real enrollments, a bulk enrollment and the segment
watch must replay on the current code.

A change to the interpreter that would make a running enrollment take a different path fails
here; such changes need `workflow.patched(...)`. To add histories after a deliberate, patched
change, run `NURTURE_RECORD_HISTORIES=1 pytest tests/test_replay.py` and commit the new files
next to the old ones (never replace old ones: they stand for workflows still running).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from nurture.audience.segments.service import put_segment
from nurture.audience.segments.sweeps import request_sweep, start_segment_watch
from nurture.contracts import SEGMENT_WATCH_ID, SweepResult
from nurture.db.engine import SessionFactory
from nurture.db.models import ContactList, ListMembership
from nurture.journeys.bulk import start_bulk_enrollment
from nurture.journeys.experiments import in_holdout
from tests.support import (
    example,
    exits_at_once,
    finish,
    make_contact,
    make_lists,
    publish_journey,
    reach_step,
    signal_event,
    start,
)
from workflows.bulk_enroll import BulkEnroll
from workflows.enrollment import JourneyEnrollment
from workflows.segment_watch import SegmentWatch

HISTORIES = Path(__file__).resolve().parent / "histories"


def replayer() -> Replayer:
    return Replayer(
        workflows=[JourneyEnrollment, BulkEnroll, SegmentWatch],
        data_converter=pydantic_data_converter,
    )


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

    await _replay_and_record(recorded)


async def _replay_and_record(recorded: dict[str, WorkflowHandle[Any, Any]]) -> None:
    for name, handle in recorded.items():
        history = await handle.fetch_history()
        await replayer().replay_workflow(history)
        if os.environ.get("NURTURE_RECORD_HISTORIES"):
            (HISTORIES / f"{name}.json").write_text(history.to_json())


@pytest.mark.usefixtures("worker")
async def test_fresh_bulk_enrollment_and_segment_watch_histories_replay(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    """The two other workflows: a list enrolled in pages (continue-as-new aside), and the
    segment watch through a sweep that admits an entry and a second one asked for by signal."""
    await make_lists(sessions, "trial")
    await publish_journey(
        sessions, exits_at_once("welcome", {"type": "list_joined", "list": "trial"})
    )
    contact_ids = [await make_contact(sessions, external_id=f"t{n}") for n in range(3)]
    async with sessions.begin() as session:
        list_id = await _list_id(session, "trial")
        session.add_all(ListMembership(list_id=list_id, contact_id=c) for c in contact_ids)
    bulk = await start_bulk_enrollment(
        sessions, client, task_queue, "welcome", list_key="trial", page_size=2
    )
    bulk_handle = client.get_workflow_handle(bulk.workflow_id)
    async with env.time_skipping_unlocked():  # type: ignore[attr-defined]
        await bulk_handle.result()

    await put_segment(sessions, "vips", "VIPs", {"type": "tag", "tag": "vip"})
    await publish_journey(
        sessions, exits_at_once("vip", {"type": "segment_entered", "segment": "vips"})
    )
    await make_contact(sessions, external_id="star", tags=["vip"])  # not seen until a sweep
    await start_segment_watch(client, task_queue)
    watch = client.get_workflow_handle(SEGMENT_WATCH_ID)
    first = await _sweep_after(watch, 0)
    await request_sweep(client, task_queue)
    await _sweep_after(watch, first.sweep)

    assert first.enrolled == 1
    await _replay_and_record({"bulk-enroll-list": bulk_handle, "segment-watch": watch})


async def _list_id(session: AsyncSession, key: str) -> uuid.UUID:
    found = await session.scalar(select(ContactList.id).where(col(ContactList.key) == key))
    assert found is not None
    return found


async def _sweep_after(watch: WorkflowHandle[Any, Any], previous: int) -> SweepResult:
    """The watch's first sweep numbered after `previous`."""
    async with asyncio.timeout(30):
        while True:
            last: SweepResult = await watch.query("last_sweep", result_type=SweepResult)
            if last.sweep > previous:
                return last
            await asyncio.sleep(0.05)


@pytest.mark.usefixtures("worker")
async def test_fresh_send_rules_history_replays(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    """Send rules in play: with at most 1 SMS a day, a send that expires first is skipped
    after its delay, and the next is delayed a day (timers named for the rule)."""
    from nurture.sending.rules import SendRules, save_send_rules

    async with sessions.begin() as session:
        await save_send_rules(
            session,
            SendRules.model_validate(
                {"frequency_caps": [{"channel": "sms", "max": 1, "per": "1d"}]}
            ),
        )
    steps = {
        "first": {"type": "send_sms", "template": "hello", "next": "coupon"},
        "coupon": {
            "type": "send_sms",
            "template": "coupon",
            "expires_after": "2h",
            "next": "reminder",
        },
        "reminder": {"type": "send_sms", "template": "reminder"},
    }
    await publish_journey(
        sessions, {"key": "capped", "name": "capped", "start": "first", "steps": steps}
    )
    contact = await make_contact(sessions, phone="+48500100300")
    _, handle = await start(sessions, client, task_queue, "capped", contact)
    result = await finish(env, handle)
    outcomes = [entry.outcome or "" for entry in result.path]
    assert outcomes[0] == "sent"
    assert outcomes[1].startswith("skipped: expired")
    assert outcomes[2].startswith("sent (delayed: frequency cap sms 1/1d until ")
    await _replay_and_record({"send-rules-capped": handle})


async def test_fresh_history_of_the_split_webhook_owner_and_push_steps_replays(
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
    settings: Any,
) -> None:
    """Issue 13's steps in one enrollment: a split, an owner assigned, a webhook to a loopback
    CRM whose answer is saved, a push to the contact's device (development outbox)."""
    from pydantic import SecretStr
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from nurture.audience.devices import add_device
    from nurture.owners import Owner, save_team
    from tests.conftest import _terminate_started
    from tests.loopback import serve
    from worker import build_worker

    async def leads(request: Request) -> JSONResponse:
        return JSONResponse({"id": "crm-1"})

    await save_team(sessions, "sales", "Sales", "round_robin", [Owner("Ann", "ann@x.io")])
    async with serve(Starlette(routes=[Route("/leads", leads, methods=["POST"])])) as crm:
        journey = {
            "key": "steps-tour",
            "name": "Steps tour",
            "entry": {"holdout_percent": 1},
            "start": "split",
            "steps": {
                "split": {
                    "type": "split",
                    "paths": [
                        {"name": "a", "weight": 50, "next": "assign"},
                        {"name": "b", "weight": 50, "next": "assign"},
                    ],
                },
                "assign": {"type": "assign_owner", "team": "sales", "next": "crm"},
                "crm": {
                    "type": "webhook",
                    "url": f"{crm}/leads",
                    "body": {"owner": "{{ fields.owner.email }}"},
                    "save": {"crm_id": "id"},
                    "next": "push",
                },
                "push": {"type": "send_push", "title": "Hi", "body": "{{ fields.crm_id }}"},
            },
        }
        await publish_journey(sessions, journey)
        contact_id = await make_contact(sessions)
        while in_holdout("steps-tour", contact_id, 1):  # this history is the treated path
            contact_id = await make_contact(sessions)
        await add_device(sessions, contact_id, "device-1")
        allowed = settings.model_copy(
            update={"outbound_allowlist": ["127.0.0.1"], "webhook_signing_secret": SecretStr("s")}
        )
        async with build_worker(client, sessions, task_queue, settings=allowed):
            _, handle = await start(sessions, client, task_queue, "steps-tour", contact_id)
            result = await finish(env, handle)
            await _terminate_started()
    assert [entry.step for entry in result.path] == ["split", "assign", "crm", "push"]
    assert result.path[2].outcome == "HTTP 200, saved crm_id"
    assert result.path[3].outcome == "sent to 1 device(s)"
    await _replay_and_record({"split-owner-webhook-push": handle})
