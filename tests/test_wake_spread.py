"""Waits until a shared instant are spread over `WAKE_SPREAD` (jitter), each enrollment at its
own fixed offset, so that a broadcast's contacts do not all wake at the same instant."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.db.engine import SessionFactory
from nurture.journeys.schedule import WAKE_SPREAD, spread_wake
from tests.support import make_contact, publish_journey, reach_step, start


def test_wake_ups_are_spread_over_the_window_and_fixed_per_enrollment() -> None:
    at = datetime(2027, 3, 1, 8, tzinfo=UTC)
    ids = [uuid.uuid4() for _ in range(1000)]
    wakes = [spread_wake(at, i) for i in ids]

    assert all(at <= wake < at + WAKE_SPREAD for wake in wakes)
    assert len(set(wakes)) > 200  # spread over the window, not one instant
    assert [spread_wake(at, i) for i in ids] == wakes  # the same on every replay


@pytest.mark.usefixtures("worker")
async def test_a_wait_until_an_instant_starts_its_timer_at_the_enrollments_offset(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    now = await env.get_current_time()
    launch = (now + timedelta(days=1)).replace(microsecond=0)
    journey: dict[str, Any] = {
        "key": "launch-wait",
        "name": "Launch",
        "start": "until_launch",
        "steps": {"until_launch": {"type": "wait", "until": launch.isoformat()}},
    }
    await publish_journey(sessions, journey)
    enrollment, handle = await start(
        sessions, client, task_queue, "launch-wait", await make_contact(sessions)
    )
    await reach_step(handle, "until_launch")

    history = await handle.fetch_history()
    timers = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]
    assert len(timers) == 1
    started = timers[0].event_time.ToDatetime(tzinfo=UTC)
    fires = started + timers[0].timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
    expected = spread_wake(launch, enrollment.id)
    assert abs(fires - expected) < timedelta(seconds=2), (fires, expected, launch)
