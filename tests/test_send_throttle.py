"""Throttling on the real Temporal dev server, in real time: two workers poll the SMS send
queue with a rate of 2 per second, and ten SMS sent at once go out at that rate, not faster.
The rate is the server's (`max_task_queue_activities_per_second`), so it holds for the two
workers together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlmodel import col
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from nurture.binaries import find_binary
from nurture.db.engine import SessionFactory
from nurture.db.models import Message
from nurture.sending.throttle import send_task_queue
from nurture.settings import Settings
from nurture.tracing import dev_server_flags
from tests.support import (
    all_enrollments_ended,
    make_contact,
    publish_journey,
    recorded_path,
    start,
)
from worker import build_worker

RATE = 2.0  # SMS per second, for both workers together
SENDS = 12


@pytest.fixture(scope="module")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=find_binary("temporal"),
        dev_server_extra_args=dev_server_flags(),
    ) as env:
        yield env


async def test_two_workers_hold_the_sms_rate(
    dev_server: WorkflowEnvironment, sessions: SessionFactory, task_queue: str
) -> None:
    client = dev_server.client
    # Another connection, as another worker process has: one client runs one worker per queue.
    other = await Client.connect(
        client.service_client.config.target_host,
        namespace=client.namespace,
        data_converter=pydantic_data_converter,
    )
    settings = Settings(temporal_task_queue=task_queue, send_rate_sms=RATE)
    await publish_journey(
        sessions,
        {
            "key": "broadcast",
            "name": "broadcast",
            "start": "text",
            "steps": {"text": {"type": "send_sms", "template": "flash-sale"}},
        },
    )
    contacts = [await make_contact(sessions, phone=f"+4850010{n:04d}") for n in range(SENDS)]
    # Enrolled before any worker runs: the sends are all due at once when the workers start.
    for contact in contacts:
        await start(sessions, client, task_queue, "broadcast", contact)
    async with (
        build_worker(client, sessions, task_queue, settings=settings, identity="worker-a"),
        build_worker(other, sessions, task_queue, settings=settings, identity="worker-b"),
    ):
        await all_enrollments_ended(sessions, within=60)
        pollers = await _pollers(dev_server, send_task_queue(task_queue, "sms"))

    assert {"worker-a", "worker-b"} <= pollers
    async with sessions() as session:
        times = sorted(
            await session.scalars(
                select(col(Message.created_at)).where(col(Message.status) == "sent")
            )
        )
    assert len(times) == SENDS
    # Unthrottled, the twelve sends take about 0.3 s. At 2 per second they take ~6 s: the
    # server lets a first burst through (up to ~5 in the first second seen here), then keeps
    # the rate, with at most a couple of tokens saved up.
    assert times[-1] - times[0] >= timedelta(seconds=(SENDS - 3 * RATE) / RATE)
    after_burst = [t for t in times if t - times[0] >= timedelta(seconds=1)]
    for i, at in enumerate(after_burst):
        in_a_second = [t for t in after_burst[i:] if t - at < timedelta(seconds=1)]
        assert len(in_a_second) <= 2 * RATE, [t.isoformat() for t in times]


async def _pollers(env: WorkflowEnvironment, queue: str) -> set[str]:
    """Identities of the workers that polled this queue for activities."""
    response = await env.client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=env.client.namespace,
            task_queue=TaskQueue(name=queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        )
    )
    return {poller.identity for poller in response.pollers}


async def test_a_send_that_waits_in_the_throttled_queue_past_its_expiry_is_skipped(
    dev_server: WorkflowEnvironment, sessions: SessionFactory, task_queue: str
) -> None:
    """At 1 SMS a second, twelve flash-sale SMS that expire after 4 seconds: the first few
    go, the rest wait in the queue past their expiry (the activity's schedule-to-start timeout)
    and are recorded as skipped, never sent late. (4 s, not 2: once, under a full suite's
    load, every one expired before the first could go.)"""
    client = dev_server.client
    settings = Settings(temporal_task_queue=task_queue, send_rate_sms=1.0)
    await publish_journey(
        sessions,
        {
            "key": "flash",
            "name": "flash",
            "start": "text",
            "steps": {"text": {"type": "send_sms", "template": "flash", "expires_after": "4s"}},
        },
    )
    contacts = [await make_contact(sessions, phone=f"+4850020{n:04d}") for n in range(SENDS)]
    enrollments = [
        (await start(sessions, client, task_queue, "flash", contact))[0] for contact in contacts
    ]
    async with build_worker(client, sessions, task_queue, settings=settings):
        await all_enrollments_ended(sessions, within=60)
    for enrollment in enrollments:  # the path is recorded, sent or expired
        assert await recorded_path(sessions, enrollment.id) == ["text"]

    async with sessions() as session:
        rows = (await session.execute(select(col(Message.status), col(Message.reason)))).all()
    sent = [r for r in rows if r[0] == "sent"]
    expired = [r for r in rows if r[1] == "expired: not sent within 4s (expires_after)"]
    assert len(rows) == SENDS
    assert sent and expired, rows
    assert len(sent) + len(expired) == SENDS
    assert len(sent) <= 2 + 2 * 1.0 * 4  # a burst, then 1 a second for 4 seconds
