"""Push goes through the same send gate as email and SMS (docs/send-rules.md): a push over a
frequency cap on channel "push" is delayed, one in quiet hours is held, each counted in
`send_holds` and shown on the path. Time-skipping server: the holds last hours."""

from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.db.engine import SessionFactory
from nurture.db.models import Message, OutboxMessage
from tests.support import finish, make_contact, ok, problems, publish_journey, start
from tests.test_send_rules import claims, holds

pytestmark = pytest.mark.usefixtures("worker")


def push_journey(key: str, count: int, **extra: Any) -> dict[str, Any]:
    steps: dict[str, Any] = {}
    for i in range(count):
        nxt = f"p{i + 1}" if i + 1 < count else None
        steps[f"p{i}"] = {"type": "send_push", "title": f"Offer {i}", "body": "b", "next": nxt}
    return {"key": key, "name": key, "start": "p0", "steps": steps, **extra}


async def with_device(api: httpx.AsyncClient, sessions: SessionFactory, **fields: Any) -> uuid.UUID:
    contact = await make_contact(sessions, **fields)
    ok(await api.post(f"/v1/contacts/{contact}/devices", json={"token": f"tok-{contact}"}), 201)
    return contact


async def test_a_push_over_a_push_cap_is_delayed_then_sent(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    rules = {"frequency_caps": [{"channel": "push", "max": 1, "per": "24h"}]}
    ok(await api.put("/v1/send-rules", json=rules))
    await publish_journey(sessions, push_journey("pushes", 2))
    contact = await with_device(api, sessions)

    _, handle = await start(sessions, client, task_queue, "pushes", contact)
    result = await finish(env, handle)

    first, second = await claims(sessions, contact)
    assert (first.channel, second.channel) == ("push", "push")
    allowed = first.at + timedelta(hours=24)
    assert allowed <= second.at < allowed + timedelta(minutes=1), (first.at, second.at)
    assert result.path[0].outcome == "sent to 1 device(s)"
    outcome = result.path[1].outcome
    assert outcome is not None
    assert outcome.startswith("sent to 1 device(s) (delayed: frequency cap push 1/1d until ")
    (hold,) = await holds(sessions, contact)
    assert (hold.channel, hold.rule, hold.action, hold.until) == (
        "push",
        "frequency_cap",
        "delayed",
        allowed,
    )
    counts = ok(await api.get("/v1/send-rules/holds", params={"journey": "pushes"}))["counts"]
    assert counts == [{"rule": "frequency_cap", "action": "delayed", "channel": "push", "count": 1}]
    timeline = ok(await api.get(f"/v1/contacts/{contact}/timeline", params={"kinds": "send_held"}))
    assert len(timeline["items"]) == 1
    async with sessions() as session:
        sent = list(await session.scalars(select(OutboxMessage)))
    assert sorted(row.payload["subject"] for row in sent) == ["Offer 0", "Offer 1"]


async def test_a_push_over_its_cap_is_skipped_when_the_step_says_so(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    rules = {"frequency_caps": [{"channel": "push", "max": 1, "per": "24h"}]}
    ok(await api.put("/v1/send-rules", json=rules))
    journey = push_journey("skipper", 2)
    journey["steps"]["p1"]["on_cap"] = "skip"
    await publish_journey(sessions, journey)
    contact = await with_device(api, sessions)

    _, handle = await start(sessions, client, task_queue, "skipper", contact)
    result = await finish(env, handle)

    assert [p.outcome for p in result.path] == [
        "sent to 1 device(s)",
        "skipped: frequency cap push 1/1d",
    ]
    async with sessions() as session:
        skipped = await session.scalar(select(Message).where(col(Message.step_id) == "p1"))
    assert skipped is not None and (skipped.channel, skipped.status) == ("push", "skipped")


async def test_a_push_in_quiet_hours_is_held_until_they_end(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    """A push reached at 22:00 in Warsaw goes at 08:00 there; an SMS-only window would not
    hold it, a window naming push does."""
    rules = {
        "quiet_hours": [
            {"start": "12:00", "end": "13:00", "channels": ["sms"]},
            {"start": "21:00", "end": "08:00", "channels": ["push"]},
        ]
    }
    ok(await api.put("/v1/send-rules", json=rules))
    day = (await env.get_current_time()).date() + timedelta(days=2)
    journey = push_journey("night-push", 1)
    journey["start"] = "until"
    journey["steps"]["until"] = {
        "type": "wait",
        "until": f"{day}T22:00:00",
        "time_zone": "Europe/Warsaw",
        "next": "p0",
    }
    await publish_journey(sessions, journey)
    contact = await with_device(api, sessions, time_zone="Europe/Warsaw")

    _, handle = await start(sessions, client, task_queue, "night-push", contact)
    result = await finish(env, handle)

    assert result.path[-1].outcome == (
        "sent to 1 device(s) (held: quiet hours until 08:00 Europe/Warsaw)"
    )
    (claim,) = await claims(sessions, contact)
    eight = datetime.combine(day + timedelta(days=1), time(8), tzinfo=ZoneInfo("Europe/Warsaw"))
    assert eight <= claim.at < eight + timedelta(minutes=1), claim.at
    (hold,) = await holds(sessions, contact)
    assert (hold.channel, hold.rule, hold.action) == ("push", "quiet_hours", "held")


async def test_a_push_step_takes_the_send_rule_keys(api: httpx.AsyncClient) -> None:
    journey = push_journey("keys", 1)
    journey["steps"]["p0"].update(transactional=True, on_cap="skip", expires_after="0s")
    ok(await api.post("/v1/journeys", json=journey), 201)
    refused = problems(await api.post("/v1/journeys/keys/validate"))
    assert refused == {"steps.p0.expires_after": "expires_after must be positive"}
    journey["steps"]["p0"]["expires_after"] = "2h"
    ok(await api.put("/v1/journeys/keys/draft", json=journey))
    refused = problems(await api.post("/v1/journeys/keys/validate"))
    assert refused == {"steps.p0": "a transactional send is never capped: on_cap does not apply"}
    del journey["steps"]["p0"]["on_cap"]
    ok(await api.put("/v1/journeys/keys/draft", json=journey))
    ok(await api.post("/v1/journeys/keys/validate"))


def test_pushes_go_through_a_throttled_queue_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The push send queue is polled by a worker of its own at SEND_RATE_PUSH, with the push
    activity (email and SMS keep theirs)."""
    import worker as worker_module
    from nurture.settings import Settings
    from nurture.simulation.standins import activity_name

    built: dict[str, dict[str, Any]] = {}

    def capture(*args: Any, **kwargs: Any) -> None:
        built[kwargs["task_queue"]] = kwargs

    monkeypatch.setattr(worker_module, "Worker", capture)
    settings = Settings(temporal_task_queue="q", send_rate_push=3.5, send_rate_sms=1.0)
    worker_module.build_worker(object(), object(), "q", settings=settings)  # type: ignore[arg-type]

    push = built["q-send-push"]
    assert [activity_name(fn) for fn in push["activities"]] == ["send_push"]
    assert push["max_task_queue_activities_per_second"] == 3.5
    assert [activity_name(fn) for fn in built["q-send-sms"]["activities"]] == ["send_message"]
    assert built["q-send-email"]["max_task_queue_activities_per_second"] is None
