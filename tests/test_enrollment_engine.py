"""The enrollment workflow under the conditions that break naive engines: repeated and early
signals, unenrolling mid-wait, retries and restarts, bad contact data, long histories."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import col
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.contacts import ContactActivities
from nurture.channels.base import DeliveryReceipt, OutgoingMessage
from nurture.channels.outbox import OutboxChannel
from nurture.contracts import ContactChange
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, Enrollment, Message, OutboxMessage
from nurture.journeys.enrollments import EnrollmentOptions, unenroll
from tests.support import (
    example,
    finish,
    make_contact,
    make_lists,
    outbox_count,
    progress,
    publish_journey,
    reach_step,
    reload,
    sent_templates,
    signal_event,
    start,
    steps_of,
)
from worker import build_worker


def journey(key: str, start_step: str, **steps: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "name": key, "start": start_step, "steps": steps}


CLICK_COUNTER = journey(
    "click-counter",
    "mail",
    mail={"type": "send_email", "template": "promo", "next": "pause"},
    pause={"type": "wait", "duration": "1d", "next": "split"},
    split={
        "type": "branch",
        "rules": [
            {
                "condition": {"type": "clicked", "step": "mail", "min_count": 2},
                "next": "twice",
            }
        ],
        "default": "once",
    },
    twice={"type": "exit", "reason": "clicked_twice"},
    once={"type": "exit", "reason": "clicked_once"},
)


@pytest.fixture
async def running(
    worker: None, sessions: SessionFactory
) -> SessionFactory:  # the real worker, for tests that need nothing special
    return sessions


async def test_duplicate_signals_count_once(
    running: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await publish_journey(running, CLICK_COUNTER)
    contact_id = await make_contact(running)
    _, handle = await start(running, client, task_queue, "click-counter", contact_id)

    await reach_step(handle, "pause")
    for _ in range(3):  # a provider retrying its webhook delivers the same event id again
        await signal_event(handle, event_id="provider-evt-1", kind="click", step="mail")
    assert (await progress(handle)).events_received == 1
    result = await finish(env, handle)

    assert result.reason == "clicked_once"


async def test_distinct_events_all_count(
    running: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await publish_journey(running, CLICK_COUNTER)
    contact_id = await make_contact(running)
    _, handle = await start(running, client, task_queue, "click-counter", contact_id)

    await reach_step(handle, "pause")
    await signal_event(handle, event_id="a", kind="click", step="mail")
    await signal_event(handle, event_id="b", kind="click", step="mail")
    result = await finish(env, handle)

    assert result.reason == "clicked_twice"


async def test_event_arriving_before_the_wait_is_not_lost(
    running: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    definition = journey(
        "early-login",
        "welcome",
        welcome={"type": "send_email", "template": "welcome", "next": "settle"},
        settle={"type": "wait", "duration": "2h", "next": "login"},
        login={
            "type": "wait_for",
            "event": {"type": "custom", "name": "login"},
            "timeout": "3d",
            "on_event": "thanks",
            "on_timeout": "nudge",
        },
        thanks={"type": "exit", "reason": "logged_in"},
        nudge={"type": "send_email", "template": "nudge"},
    )
    await publish_journey(running, definition)
    contact_id = await make_contact(running)
    _, handle = await start(running, client, task_queue, "early-login", contact_id)

    # Signalled at once: the workflow has not reached the wait_for (it may not have sent yet).
    await signal_event(handle, kind="custom", name="login")
    result = await finish(env, handle)

    assert (result.status, result.reason) == ("exited", "logged_in")
    waited = result.path[2]
    assert waited.step == "login" and waited.outcome is not None
    assert waited.outcome.startswith("event ")
    assert waited.left_at is not None and waited.left_at - waited.entered_at < timedelta(minutes=1)
    assert await sent_templates(running, contact_id) == ["welcome"]


async def test_unenroll_mid_wait_ends_promptly_and_is_recorded(
    running: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await publish_journey(running, example("hubspot-nurture-goal"))
    contact_id = await make_contact(running)
    enrollment, handle = await start(
        running, client, task_queue, "hubspot-nurture-goal", contact_id
    )

    await reach_step(handle, "wait_2d")
    await unenroll(running, client, enrollment.id)
    result = await finish(env, handle)

    assert (result.status, result.reason) == ("exited", "unenrolled")
    assert steps_of(result) == ["intro", "wait_2d"]
    assert await sent_templates(running, contact_id) == ["nurture-intro"]
    row = await reload(running, Enrollment, enrollment.id)
    assert (row.status, row.exit_reason) == ("exited", "unenrolled")
    wait_entry = result.path[1]
    assert row.ended_at - wait_entry.entered_at < timedelta(hours=1)  # not after the 2 days


async def test_enrolling_twice_returns_the_same_enrollment(
    running: SessionFactory, client: Client, task_queue: str
) -> None:
    await publish_journey(running, example("hubspot-nurture-goal"))
    contact_id = await make_contact(running)
    first, _ = await start(running, client, task_queue, "hubspot-nurture-goal", contact_id)
    second, handle = await start(running, client, task_queue, "hubspot-nurture-goal", contact_id)

    assert second.id == first.id
    await reach_step(handle, "wait_2d")
    async with running() as session:
        rows = (await session.scalars(select(col(Enrollment.id)))).all()
    assert rows == [first.id]


async def test_send_to_contact_without_email_is_skipped_and_journey_goes_on(
    running: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await make_lists(running, "paid-customers")
    await publish_journey(running, example("benchmark-welcome"))
    contact_id = await make_contact(running, email=None, phone="+15550100")
    _, handle = await start(running, client, task_queue, "benchmark-welcome", contact_id)

    result = await finish(env, handle)

    assert result.status == "completed"
    assert steps_of(result) == ["welcome", "wait_1d", "clicked_purchase", "follow_up"]
    assert result.path[0].outcome == "skipped: no_email_address"
    async with running() as session:
        messages = (
            await session.scalars(select(Message).where(col(Message.contact_id) == contact_id))
        ).all()
    assert {(m.template, m.status, m.reason) for m in messages} == {
        ("welcome", "skipped", "no_email_address"),
        ("welcome-follow-up", "skipped", "no_email_address"),
    }
    assert await outbox_count(running) == 0


async def test_revoked_consent_skips_the_send(
    running: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await publish_journey(running, example("hubspot-nurture-goal"))
    contact_id = await make_contact(running, consent={"email": "revoked"})
    _, handle = await start(running, client, task_queue, "hubspot-nurture-goal", contact_id)

    result = await finish(env, handle)

    assert result.status == "completed"
    assert {p.outcome for p in result.path if p.type == "send_email"} == {
        "skipped: email_consent_revoked"
    }
    assert await outbox_count(running) == 0


async def test_failed_contact_steps_are_recorded_and_the_journey_goes_on(
    running: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    definition = journey(
        "bad-data",
        "count",
        count={"type": "update_contact", "increment": {"score": 5}, "next": "join"},
        join={"type": "add_to_list", "list": "no-such-list", "next": "tag"},
        tag={"type": "update_contact", "add_tags": ["reached-the-end"]},
    )
    await publish_journey(running, definition)
    contact_id = await make_contact(running, fields={"score": "high"})
    _, handle = await start(running, client, task_queue, "bad-data", contact_id)

    result = await finish(env, handle)

    assert [(p.step, p.outcome) for p in result.path] == [
        ("count", "failed: cannot increment field 'score': it holds 'high', not a number"),
        ("join", "failed: unknown list 'no-such-list'"),
        ("tag", "done"),
    ]
    contact = await reload(running, Contact, contact_id)
    assert contact.fields == {"score": "high"}
    assert contact.tags == ["reached-the-end"]


async def test_long_journey_continues_as_new_without_repeating_sends(
    running: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    steps: dict[str, Any] = {}
    for i in range(1, 5):
        steps[f"mail{i}"] = {"type": "send_email", "template": f"t{i}", "next": f"wait{i}"}
        steps[f"wait{i}"] = {"type": "wait", "duration": "1d", "next": f"mail{i + 1}"}
    steps["wait4"]["next"] = "split"
    steps["split"] = {
        "type": "branch",
        "rules": [{"condition": {"type": "clicked", "step": "mail1"}, "next": "clicked"}],
        "default": None,
    }
    steps["clicked"] = {"type": "exit", "reason": "clicked_first_mail"}
    await publish_journey(running, journey("long", "mail1", **steps))
    contact_id = await make_contact(running)
    enrollment, handle = await start(
        running, client, task_queue, "long", contact_id, max_steps_per_run=3
    )

    await reach_step(handle, "wait1")
    first_run_id = (await handle.describe()).run_id
    await signal_event(handle, event_id="click-1", kind="click", step="mail1")
    result = await finish(env, handle)

    # The click received in the first run still counts in the last one.
    assert (result.status, result.reason) == ("exited", "clicked_first_mail")
    assert len(result.path) == 10
    assert await sent_templates(running, contact_id) == ["t1", "t2", "t3", "t4"]
    assert await outbox_count(running) == 4
    first_run = client.get_workflow_handle(enrollment.workflow_id, run_id=first_run_id)
    history = await first_run.fetch_history()
    assert history.events[-1].HasField("workflow_execution_continued_as_new_event_attributes")


class CrashAfterDelivery:
    """A provider that accepts the message, then the worker "dies" before recording it. It
    delivers through the outbox, which dedupes on the idempotency key: the uncertain attempt is
    sent again, and the outbox keeps one."""

    dedupes_on_key = True

    def __init__(self, outbox: OutboxChannel) -> None:
        self.outbox = outbox
        self.attempts = 0

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        self.attempts += 1
        receipt = await self.outbox.send(message)
        if self.attempts == 1:
            raise ConnectionError("worker lost its connection after the provider accepted")
        return receipt


async def test_retried_send_is_delivered_once(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    flaky = CrashAfterDelivery(OutboxChannel(sessions))
    await publish_journey(sessions, example("hubspot-nurture-goal"))
    contact_id = await make_contact(sessions)
    async with build_worker(client, sessions, task_queue, channels={"email": flaky, "sms": flaky}):
        _, handle = await start(sessions, client, task_queue, "hubspot-nurture-goal", contact_id)
        result = await finish(env, handle)

    assert result.status == "completed"
    assert flaky.attempts == 4  # three emails, the first one tried twice
    assert await outbox_count(sessions) == 3
    assert await sent_templates(sessions, contact_id) == [
        "nurture-intro", "nurture-case-study", "nurture-offer",
    ]  # fmt: skip


async def test_worker_restarted_mid_journey_sends_nothing_twice(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await make_lists(sessions, "paid-customers")
    await publish_journey(sessions, example("benchmark-welcome"))
    contact_id = await make_contact(sessions)
    # No workflow cache, hence no sticky queue: the next task goes straight to any worker,
    # as it would after the server notices a dead worker's sticky queue.
    async with build_worker(client, sessions, task_queue, max_cached_workflows=0):
        _, handle = await start(sessions, client, task_queue, "benchmark-welcome", contact_id)
        await reach_step(handle, "wait_1d")
    # The first worker is gone; the enrollment sleeps on in Temporal. A new worker picks it up,
    # replays the history (the welcome send is not repeated) and carries on.
    async with build_worker(client, sessions, task_queue):
        result = await finish(env, handle)

    assert steps_of(result) == ["welcome", "wait_1d", "clicked_purchase", "follow_up"]
    assert await sent_templates(sessions, contact_id) == ["welcome", "welcome-follow-up"]
    assert await outbox_count(sessions) == 2


async def test_retried_contact_update_increments_once(
    sessions: SessionFactory, client: Client, task_queue: str
) -> None:
    contact_id = await make_contact(sessions, fields={"score": 10})
    activities = ContactActivities(sessions, client, EnrollmentOptions(task_queue))
    change = ContactChange(
        operation_key=f"{uuid.uuid4()}:score:1",
        contact_id=contact_id,
        increment={"score": 5},
        add_tags=["scored"],
    )

    first = await ActivityEnvironment().run(activities.update_contact, change)
    again = await ActivityEnvironment().run(activities.update_contact, change)  # a retry

    assert first.fields["score"] == again.fields["score"] == 15
    contact = await reload(sessions, Contact, contact_id)
    assert contact.fields["score"] == 15
    assert contact.tags == ["scored"]


async def test_outbox_channel_delivers_once_per_key(sessions: SessionFactory) -> None:
    outbox = OutboxChannel(sessions)
    message = OutgoingMessage(
        idempotency_key="enrollment:step:1",
        message_id=uuid.uuid4(),
        channel="email",
        to_address="ada@example.com",
        template="welcome",
    )
    first = await outbox.send(message)
    second = await outbox.send(message)
    # Attempts at the same time: whichever inserts, all of them answer the one row's id.
    other = replace(message, idempotency_key="enrollment:step:2")
    together = await asyncio.gather(*(outbox.send(other) for _ in range(8)))

    assert first == second
    assert len({receipt.provider_message_id for receipt in together}) == 1
    async with sessions() as session:
        rows = (
            await session.scalars(
                select(OutboxMessage).order_by(col(OutboxMessage.idempotency_key))
            )
        ).all()
    assert [(r.idempotency_key, r.to_address) for r in rows] == [
        ("enrollment:step:1", "ada@example.com"),
        ("enrollment:step:2", "ada@example.com"),
    ]
    assert str(rows[0].id) == first.provider_message_id
    assert str(rows[1].id) == together[0].provider_message_id
    assert rows[0].payload["message_id"] == str(message.message_id)


async def test_contact_erased_behind_the_workflows_back_ends_it_cleanly(
    running: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await publish_journey(running, example("hubspot-nurture-goal"))
    contact_id = await make_contact(running)
    _, handle = await start(running, client, task_queue, "hubspot-nurture-goal", contact_id)
    await reach_step(handle, "wait_2d")

    # Deleted straight from the database: no unenroll signal, the enrollment row cascades away.
    async with running.begin() as session:
        await session.delete(await session.get(Contact, contact_id))
    result = await finish(env, handle)

    assert (result.status, result.reason) == ("exited", "contact_deleted")
    assert [(p.step, p.outcome) for p in result.path][-1] == (
        "case_study",
        "skipped: contact_deleted",
    )
    assert await outbox_count(running) == 1  # only the intro, sent before the erasure
