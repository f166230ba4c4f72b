"""One change path (`nurture.audience.changes`): a change made by a journey step reaches every
journey as an API change does (seeds 000 and 002), a change that committed is announced even
when the process that made it dies first, and journeys that feed each other stop."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.contacts import ContactActivities
from nurture.audience.changes import Announcer
from nurture.contracts import EnrollmentResult, ListChange
from nurture.db.engine import SessionFactory
from nurture.db.models import ContactChangeRecord, Enrollment, Journey, TimelineNote
from nurture.journeys.enrollments import EnrollmentOptions
from tests.support import (
    all_enrollments_ended,
    enrolled_in,
    exits_at_once,
    finish,
    make_contact,
    make_lists,
    ok,
    publish_journey,
    reach_step,
    recorded_path,
    sent_templates,
    start,
)

pytestmark = pytest.mark.usefixtures("worker")


def _journey(key: str, steps: dict[str, Any], start_at: str, **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "name": key,
        "trigger": {"type": "api"},
        "start": start_at,
        "steps": steps,
        **extra,
    }


# HubSpot's nurture (seed 002): two emails three days apart, goal: becomes a customer.
NURTURE = _journey(
    "nurt",
    {
        "first": {"type": "send_email", "template": "nurt-1", "next": "wait"},
        "wait": {"type": "wait", "duration": "3d", "next": "second"},
        "second": {"type": "send_email", "template": "nurt-2"},
    },
    "first",
    goal={
        "criteria": {"type": "field", "field": "lifecycle_stage", "op": "eq", "value": "customer"}
    },
)
# Another journey's step makes the contact a customer.
BUY = _journey(
    "buy",
    {"set_customer": {"type": "update_contact", "set": {"lifecycle_stage": "customer"}}},
    "set_customer",
)


async def _enrollment(sessions: SessionFactory, journey_key: str) -> Enrollment:
    async with sessions() as session:
        found = await session.scalar(
            select(Enrollment)
            .join(Journey, col(Journey.id) == col(Enrollment.journey_id))
            .where(col(Journey.key) == journey_key)
            .order_by(col(Enrollment.enrolled_at).desc())
            .limit(1)
        )
    assert found is not None, f"nobody entered {journey_key}"
    return found


async def _wait_enrolled(
    sessions: SessionFactory, journey_key: str, count: int = 1, within: float = 10
) -> list[str]:
    async with asyncio.timeout(within):
        while True:
            found = await enrolled_in(sessions, journey_key)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)


async def test_a_goal_met_through_another_journeys_step_exits_before_the_next_email(
    sessions: SessionFactory, client: Client, task_queue: str, env: WorkflowEnvironment
) -> None:
    await publish_journey(sessions, NURTURE)
    await publish_journey(sessions, BUY)
    ada = await make_contact(sessions, external_id="ada", fields={"lifecycle_stage": "lead"})
    _, nurt = await start(sessions, client, task_queue, "nurt", ada)
    await reach_step(nurt, "wait")

    _, buy = await start(sessions, client, task_queue, "buy", ada)
    assert (await finish(env, buy)).status == "completed"
    result = await finish(env, nurt)

    assert (result.status, result.reason) == ("exited", "goal_met")
    assert await sent_templates(sessions, ada) == ["nurt-1"]  # never the second email


async def test_a_branch_after_another_journeys_change_sees_the_new_value(
    sessions: SessionFactory, client: Client, task_queue: str, env: WorkflowEnvironment
) -> None:
    decide = _journey(
        "decide",
        {
            "wait": {"type": "wait", "duration": "1d", "next": "plan"},
            "plan": {
                "type": "branch",
                "rules": [
                    {
                        "condition": {"type": "field", "field": "plan", "op": "eq", "value": "pro"},
                        "next": "pro",
                    }
                ],
                "default": "free",
            },
            "pro": {"type": "update_contact", "add_tags": ["saw-pro"]},
            "free": {"type": "update_contact", "add_tags": ["saw-free"]},
        },
        "wait",
    )
    upgrade = _journey("upgrade", {"up": {"type": "update_contact", "set": {"plan": "pro"}}}, "up")
    await publish_journey(sessions, decide)
    await publish_journey(sessions, upgrade)
    bob = await make_contact(sessions, fields={"plan": "free"})
    _, waiting = await start(sessions, client, task_queue, "decide", bob)
    await reach_step(waiting, "wait")

    _, up = await start(sessions, client, task_queue, "upgrade", bob)
    await finish(env, up)
    result = await finish(env, waiting)

    assert [entry.step for entry in result.path] == ["wait", "plan", "pro"]
    assert result.path[1].outcome == "rule 0 matched"


async def test_an_add_to_list_step_starts_the_lists_journey(
    sessions: SessionFactory, client: Client, task_queue: str, env: WorkflowEnvironment
) -> None:
    await make_lists(sessions, "paid")
    mover = _journey("mover", {"to_paid": {"type": "add_to_list", "list": "paid"}}, "to_paid")
    await publish_journey(sessions, mover)
    await publish_journey(
        sessions, exits_at_once("paid-welcome", {"type": "list_joined", "list": "paid"})
    )
    cy = await make_contact(sessions, external_id="cy")
    _, handle = await start(sessions, client, task_queue, "mover", cy)
    await finish(env, handle)

    assert await _wait_enrolled(sessions, "paid-welcome") == ["cy"]
    welcome = await _enrollment(sessions, "paid-welcome")
    assert welcome.entered_by == "list_joined:paid"
    await all_enrollments_ended(sessions)
    assert await enrolled_in(sessions, "paid-welcome") == ["cy"]  # once


async def test_a_step_that_sets_a_field_starts_the_segment_journey_within_seconds(
    sessions: SessionFactory,
    client: Client,
    task_queue: str,
    env: WorkflowEnvironment,
    api: httpx.AsyncClient,
) -> None:
    # Seed 000: "update contact details" sets customer type = paid customer, which moves the
    # contact into the "paid" sub-list and the journey that starts from it. No SegmentWatch
    # runs here, so no sweep can be what lets the contact in.
    paid = {"type": "field", "field": "fields.customer_type", "op": "eq", "value": "paid customer"}
    ok(await api.put("/v1/segments/paid", json={"name": "Paid", "filter": paid}), 201)
    await publish_journey(
        sessions, exits_at_once("paid-flow", {"type": "segment_entered", "segment": "paid"})
    )
    update = _journey(
        "update-details",
        {"set_paid": {"type": "update_contact", "set": {"customer_type": "paid customer"}}},
        "set_paid",
    )
    await publish_journey(sessions, update)
    dee = await make_contact(sessions, external_id="dee", fields={"customer_type": "trial"})

    _, handle = await start(sessions, client, task_queue, "update-details", dee)
    await finish(env, handle)

    assert await _wait_enrolled(sessions, "paid-flow", within=5) == ["dee"]
    assert (await _enrollment(sessions, "paid-flow")).entered_by == "segment_entered:paid"


async def test_an_api_change_is_announced_by_the_relay_when_the_process_dies_after_commit(
    sessions: SessionFactory,
    client: Client,
    task_queue: str,
    api: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await make_lists(sessions, "news")
    await publish_journey(
        sessions,
        exits_at_once(
            "newsletter", {"type": "list_joined", "list": "news"}, entry={"reentry": "always"}
        ),
    )
    ed = ok(await api.put("/v1/contacts/ed", json={"email": "ed@example.com"}), 201)

    # The API process "dies" between the commit and the announcement: nothing is announced.
    async def dies(self: Announcer, change_ids: list[int]) -> None:
        raise ConnectionResetError("process killed")

    monkeypatch.setattr(Announcer, "announce_now", dies)
    with pytest.raises(ConnectionResetError):
        await api.post("/v1/lists/news/members", json={"contact_ids": [ed["id"]]})
    monkeypatch.undo()
    assert await enrolled_in(sessions, "newsletter") == []

    relay = Announcer(sessions, client, EnrollmentOptions(task_queue))
    assert await relay.relay_once() == 0  # the dead process's lease has not run out yet
    await _expire_leases(sessions)
    announced = await asyncio.gather(relay.relay_once(), relay.relay_once())  # two workers
    assert sorted(announced) == [0, 1]
    assert await _wait_enrolled(sessions, "newsletter") == ["ed"]

    # Announcing again (a relay that died before marking the row) enrolls nobody twice, even
    # in a journey that lets contacts in again and again.
    await all_enrollments_ended(sessions)
    async with sessions.begin() as session:
        await session.execute(sa.update(ContactChangeRecord).values(announced_at=None))
    await _expire_leases(sessions)
    assert await relay.relay_once() == 2  # the contact's creation and its list join
    await all_enrollments_ended(sessions)
    assert await enrolled_in(sessions, "newsletter") == ["ed"]


async def _expire_leases(sessions: SessionFactory) -> None:
    """As if the lease's 30 seconds had passed."""
    async with sessions.begin() as session:
        await session.execute(
            sa.update(ContactChangeRecord).values(
                lease_until=sa.func.now() - sa.text("interval '1 second'")
            )
        )


@pytest.fixture
def flaky_announcer(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The first announcement fails after the change committed (a crash); later ones work."""
    calls: list[int] = []
    real = Announcer.announce_now

    async def first_fails(self: Announcer, change_ids: list[int]) -> Any:
        calls.append(len(change_ids))
        if len(calls) == 1:
            raise ConnectionResetError("worker killed")
        return await real(self, change_ids)

    monkeypatch.setattr(Announcer, "announce_now", first_fails)
    yield calls


async def test_a_journey_steps_change_is_announced_by_the_activitys_retry(
    sessions: SessionFactory, client: Client, task_queue: str, flaky_announcer: list[int]
) -> None:
    await make_lists(sessions, "vip")
    await publish_journey(
        sessions, exits_at_once("vip-welcome", {"type": "list_joined", "list": "vip"})
    )
    fay = await make_contact(sessions, external_id="fay")
    activities = ContactActivities(sessions, client, EnrollmentOptions(task_queue))
    change = ListChange(
        contact_id=fay,
        list_key="vip",
        member=True,
        source="journey:x:s",
        enrollment_id=uuid.uuid4(),
    )

    with pytest.raises(ConnectionResetError):
        await ActivityEnvironment().run(activities.change_list_membership, change)
    assert await enrolled_in(sessions, "vip-welcome") == []
    await ActivityEnvironment().run(activities.change_list_membership, change)  # the retry

    assert await _wait_enrolled(sessions, "vip-welcome") == ["fay"]
    await all_enrollments_ended(sessions)
    async with sessions() as session:
        rows = list(await session.scalars(select(ContactChangeRecord)))
    assert len(rows) == 1  # joined once, recorded once
    assert rows[0].announced_at is not None
    assert rows[0].source == "journey:x:s"
    assert await enrolled_in(sessions, "vip-welcome") == ["fay"]


async def test_two_journeys_that_feed_each_other_stop_at_their_reentry_rules(
    sessions: SessionFactory, client: Client, task_queue: str, env: WorkflowEnvironment
) -> None:
    # ping: joined list "a" -> leave "a", join "b"; pong: joined "b" -> leave "b", join "a".
    # Each hands the contact to the other for ever, unless the entry rules say no. The hour's
    # wait lets the other journey's previous enrollment end first (time skips only once it
    # has), so each hand-over meets the re-entry rule rather than a journey still running.
    await make_lists(sessions, "a", "b")

    def feeder(key: str, own: str, other: str, **entry: Any) -> dict[str, Any]:
        return {
            "key": key,
            "name": key,
            "trigger": {"type": "list_joined", "list": own},
            "entry": entry,
            "start": "leave",
            "steps": {
                "leave": {"type": "remove_from_list", "list": own, "next": "pause"},
                "pause": {"type": "wait", "duration": "1h", "next": "hand_over"},
                "hand_over": {"type": "add_to_list", "list": other},
            },
        }

    await publish_journey(sessions, feeder("ping", "a", "b", reentry="after_exit", max_entries=3))
    await publish_journey(sessions, feeder("pong", "b", "a"))  # reentry: never (the default)
    gus = await make_contact(sessions, external_id="gus")
    ok_lists = EnrollmentOptions(task_queue)
    announcer = Announcer(sessions, client, ok_lists)
    from nurture.audience.lists import add_members

    await add_members(sessions, client, ok_lists, "a", [gus])
    async with env.time_skipping_unlocked():  # type: ignore[attr-defined]
        await _wait_enrolled(sessions, "pong", 1)
        await _wait_enrolled(sessions, "ping", 2)
        await all_enrollments_ended(sessions)
    assert await announcer.relay_once() == 0  # nothing left unannounced

    # ping ran twice (first entry, then handed back by pong); pong's second turn was refused.
    assert await enrolled_in(sessions, "ping") == ["gus", "gus"]
    assert await enrolled_in(sessions, "pong") == ["gus"]
    async with sessions() as session:
        refusals = list(
            await session.scalars(select(TimelineNote).where(col(TimelineNote.contact_id) == gus))
        )
    assert [(r.journey_key, r.reason, r.source) for r in refusals] == [
        ("pong", "reentry_never", "list_joined:b")
    ]
    second_ping = await _enrollment(sessions, "ping")
    assert await recorded_path(sessions, second_ping.id) == ["leave", "pause", "hand_over"]
    handle = client.get_workflow_handle(second_ping.workflow_id, result_type=EnrollmentResult)
    assert (await handle.result()).status == "completed"
