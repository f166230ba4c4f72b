"""Segment-based journeys (seed 003) on the time-skipping server: a one-time run over a
segment, newcomers entering a once_and_new journey, and a large run (1,000 contacts; 20,000
with NURTURE_TEST_AUDIENCE=20000) whose first worker is killed half-way, enrolling everyone
exactly once. (Recurring runs use Temporal
Schedules, which only the real server has: see tests/test_dev_server.py.)"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlmodel import col
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.audience.segments.service import put_segment
from nurture.db.engine import SessionFactory
from nurture.db.models import BulkEnrollment
from nurture.journeys.audiences import activate_audience, once_workflow_id
from nurture.journeys.enrollments import EnrollmentOptions
from tests.support import (
    all_enrollments_ended,
    exits_at_once,
    make_contact,
    ok,
    publish_journey,
)
from worker import build_worker

TRIALS = {"type": "tag", "tag": "trial", "op": "has"}


def _tagger(key: str, **trigger: Any) -> dict[str, Any]:
    return {
        "key": key,
        "name": key,
        "trigger": {"type": "segment", "segment": "trials", **trigger},
        "start": "tag",
        "steps": {"tag": {"type": "update_contact", "add_tags": [f"in-{key}"]}},
    }


async def _wait_done(sessions: SessionFactory, workflow_id: str, within: float = 120) -> Any:
    async with asyncio.timeout(within):
        while True:
            async with sessions() as session:
                bulk = await session.scalar(
                    select(BulkEnrollment).where(col(BulkEnrollment.workflow_id) == workflow_id)
                )
            if bulk is not None and bulk.status == "completed":
                return bulk
            await asyncio.sleep(0.2)


async def _wait_enrolled(
    sessions: SessionFactory, journey_key: str, at_least: int, within: float = 300
) -> None:
    async with asyncio.timeout(within):
        while True:
            if (await _enrolled(sessions, journey_key))[0] >= at_least:
                return
            await asyncio.sleep(0.1)


async def _enrolled(sessions: SessionFactory, journey_key: str) -> tuple[int, int]:
    """(enrollments, distinct contacts) of a journey."""
    async with sessions() as session:
        row = (
            await session.execute(
                text(
                    "SELECT count(*), count(DISTINCT e.contact_id) FROM enrollments e "
                    "JOIN journeys j ON j.id = e.journey_id WHERE j.key = :key"
                ),
                {"key": journey_key},
            )
        ).one()
    return int(row[0]), int(row[1])


@pytest.mark.usefixtures("worker")
async def test_a_one_time_segment_journey_enrolls_the_members_once(
    sessions: SessionFactory, client: Client, task_queue: str
) -> None:
    await put_segment(sessions, "trials", "Trials", TRIALS)
    for _ in range(7):
        await make_contact(sessions, tags=["trial"])
    await make_contact(sessions, tags=["paid"])
    await publish_journey(sessions, _tagger("onboard", mode="once"))
    options = EnrollmentOptions(task_queue)

    run_id = await activate_audience(sessions, client, options, "onboard")
    bulk = await _wait_done(sessions, once_workflow_id("onboard"))
    again = await activate_audience(sessions, client, options, "onboard")  # published again

    assert run_id == again == once_workflow_id("onboard")
    assert (bulk.total, bulk.enrolled) == (7, 7)
    async with sessions() as session:
        runs = await session.scalar(select(func.count()).select_from(BulkEnrollment))
    assert runs == 1
    assert await _enrolled(sessions, "onboard") == (7, 7)


@pytest.mark.usefixtures("worker")
async def test_once_and_new_lets_newcomers_in_once(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, task_queue: str
) -> None:
    await put_segment(sessions, "trials", "Trials", TRIALS)
    await make_contact(sessions, tags=["trial"])
    await publish_journey(sessions, _tagger("newcomers", mode="once_and_new"))
    await activate_audience(sessions, client, EnrollmentOptions(task_queue), "newcomers")
    await _wait_done(sessions, once_workflow_id("newcomers"))

    ok(await api.put("/v1/contacts/late", json={"tags": ["trial"]}), 201)  # joins later
    ok(await api.put("/v1/contacts/late", json={"tags": ["other"]}))  # leaves
    ok(await api.put("/v1/contacts/late", json={"tags": ["trial"]}))  # and comes back

    assert await _enrolled(sessions, "newcomers") == (2, 2)


async def test_a_large_audience_is_enrolled_exactly_once_when_the_worker_is_killed_half_way(
    sessions: SessionFactory,
    client: Client,
    task_queue: str,
    env: WorkflowEnvironment,
    database_url: str,
) -> None:
    # 1,000 here keeps the suite fast on two cores; NURTURE_TEST_AUDIENCE=20000 runs the
    # issue's 20,000 (a run of it is recorded in docs/benchmarks.md).
    total = int(os.environ.get("NURTURE_TEST_AUDIENCE", "1000"))
    patience = max(300.0, total * 0.06)  # seconds; two cores enroll about 50 contacts a second
    async with sessions.begin() as session:  # a big audience, inserted in one statement
        await session.execute(
            text(
                "INSERT INTO contacts (id, email, tags, fields, consent, created_at, updated_at) "
                "SELECT gen_random_uuid(), 'c' || n || '@example.com', ARRAY['trial'], "
                "'{}'::jsonb, '{}'::jsonb, now(), now() FROM generate_series(1, :total) AS n"
            ),
            {"total": total},
        )
    await put_segment(sessions, "trials", "Trials", TRIALS)
    trigger = {"type": "segment", "segment": "trials", "mode": "once"}
    await publish_journey(sessions, exits_at_once("big", trigger))
    options = EnrollmentOptions(task_queue)

    # The first worker runs in a process of its own, killed (SIGKILL) once about half of the
    # audience is in: whatever it was doing (a page, enrollments, their activities) is cut short.
    first = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.worker_process",
        database_url,
        client.service_client.config.target_host,
        task_queue,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert first.stdout is not None
        assert await asyncio.wait_for(first.stdout.readline(), 60) == b"ready\n"
        await activate_audience(sessions, client, options, "big")
        await _wait_enrolled(sessions, "big", total // 2, patience)
    finally:
        first.kill()
        await first.wait()
    async with (
        build_worker(client, sessions, task_queue),
        # The clock runs free: what the dead worker held times out (heartbeat, start-to-close)
        # at once and is retried here.
        env.time_skipping_unlocked(),  # type: ignore[attr-defined]
    ):
        bulk = await _wait_done(sessions, once_workflow_id("big"), within=patience)
        # Let every enrollment end while a worker runs: the test server would keep time
        # skipping locked for later tests if they were terminated mid-step.
        await all_enrollments_ended(sessions, within=patience, poll=0.2)

    assert await _enrolled(sessions, "big") == (total, total)
    assert bulk.done == total
