"""The seed documents' journeys, end to end on the time-skipping server and real Postgres."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, Enrollment
from tests.support import (
    example,
    finish,
    make_contact,
    make_lists,
    publish_journey,
    reach_step,
    recorded_path,
    reload,
    sent_templates,
    signal_event,
    start,
    steps_of,
)

pytestmark = pytest.mark.usefixtures("worker")


async def test_benchmark_click_on_purchase_link_marks_paid_customer(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await make_lists(sessions, "paid-customers")
    await publish_journey(sessions, example("benchmark-welcome"))
    contact_id = await make_contact(sessions, fields={"customer_type": "lead"})
    enrollment, handle = await start(sessions, client, task_queue, "benchmark-welcome", contact_id)

    await reach_step(handle, "wait_1d")
    await signal_event(handle, kind="click", step="welcome", link="purchase")
    result = await finish(env, handle)

    assert result.status == "completed"
    assert steps_of(result) == [
        "welcome",
        "wait_1d",
        "clicked_purchase",
        "mark_paid",
        "to_customers",
    ]
    contact = await reload(sessions, Contact, contact_id)
    assert contact.fields["customer_type"] == "paid customer"
    assert await sent_templates(sessions, contact_id) == ["welcome"]
    assert await recorded_path(sessions, enrollment.id) == steps_of(result)
    row = await reload(sessions, Enrollment, enrollment.id)
    assert (row.status, row.exit_reason) == ("completed", None)


async def test_benchmark_no_click_gets_follow_up(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await make_lists(sessions, "paid-customers")
    await publish_journey(sessions, example("benchmark-welcome"))
    contact_id = await make_contact(sessions, fields={"customer_type": "lead"})
    _, handle = await start(sessions, client, task_queue, "benchmark-welcome", contact_id)

    await reach_step(handle, "wait_1d")
    # A click on another link of the welcome email is not the purchase link.
    await signal_event(handle, kind="click", step="welcome", link="blog")
    result = await finish(env, handle)

    assert steps_of(result) == ["welcome", "wait_1d", "clicked_purchase", "follow_up"]
    assert await sent_templates(sessions, contact_id) == ["welcome", "welcome-follow-up"]
    contact = await reload(sessions, Contact, contact_id)
    assert contact.fields["customer_type"] == "lead"
    waited = result.path[1]
    assert waited.left_at is not None
    assert waited.left_at - waited.entered_at >= timedelta(days=1)


async def test_hubspot_lead_becoming_customer_exits_before_next_email(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await publish_journey(sessions, example("hubspot-nurture-goal"))
    contact_id = await make_contact(sessions, fields={"lifecycle_stage": "lead"})
    enrollment, handle = await start(
        sessions, client, task_queue, "hubspot-nurture-goal", contact_id
    )

    await reach_step(handle, "wait_2d")
    async with sessions.begin() as session:
        contact = await session.get(Contact, contact_id)
        assert contact is not None
        contact.fields = {**contact.fields, "lifecycle_stage": "customer"}
    await handle.signal("contact_changed")
    result = await finish(env, handle)

    assert (result.status, result.reason) == ("exited", "goal_met")
    assert await sent_templates(sessions, contact_id) == ["nurture-intro"]
    assert steps_of(result) == ["intro", "wait_2d"]
    row = await reload(sessions, Enrollment, enrollment.id)
    assert (row.status, row.exit_reason) == ("exited", "goal_met")
    assert row.ended_at is not None


async def test_hubspot_goal_met_by_event_during_wait(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await publish_journey(sessions, example("hubspot-nurture-goal"))
    contact_id = await make_contact(sessions, fields={"lifecycle_stage": "lead"})
    _, handle = await start(sessions, client, task_queue, "hubspot-nurture-goal", contact_id)

    await reach_step(handle, "wait_2d")
    await env.sleep(timedelta(days=2, hours=1))
    await reach_step(handle, "wait_3d")
    await signal_event(handle, kind="custom", name="purchase")
    result = await finish(env, handle)

    assert (result.status, result.reason) == ("exited", "goal_met")
    assert await sent_templates(sessions, contact_id) == ["nurture-intro", "nurture-case-study"]


async def test_hubspot_existing_customer_is_not_enrolled(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await publish_journey(sessions, example("hubspot-nurture-goal"))
    contact_id = await make_contact(sessions, fields={"lifecycle_stage": "Customer"})
    enrollment, handle = await start(
        sessions, client, task_queue, "hubspot-nurture-goal", contact_id
    )

    result = await finish(env, handle)

    assert (result.status, result.reason) == ("not_enrolled", "goal_already_met")
    assert result.path == []
    assert await sent_templates(sessions, contact_id) == []
    row = await reload(sessions, Enrollment, enrollment.id)
    assert (row.status, row.exit_reason) == ("not_enrolled", "goal_already_met")


def _dynamics(launch: str | None) -> dict[str, Any]:
    definition = example("dynamics-launch")
    if launch is not None:
        definition["steps"]["until_launch"]["until"] = launch
    return definition


@pytest.mark.parametrize("launch_in", [timedelta(days=-30), timedelta(days=20)])
async def test_dynamics_click_then_wait_for_launch_then_sms(
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
    launch_in: timedelta,
) -> None:
    now = await env.get_current_time()
    launch = (now + launch_in).replace(microsecond=0, tzinfo=None).isoformat()  # Warsaw time
    await publish_journey(sessions, _dynamics(launch))
    contact_id = await make_contact(sessions, phone="+48500100200")
    _, handle = await start(sessions, client, task_queue, "dynamics-launch", contact_id)

    await reach_step(handle, "clicked_product")
    await signal_event(handle, kind="click", step="announcement", link="product")
    result = await finish(env, handle)

    assert steps_of(result) == ["announcement", "clicked_product", "until_launch", "launch_sms"]
    assert await sent_templates(sessions, contact_id) == ["product-announcement", "launch-day"]
    waited = result.path[2]
    assert waited.left_at is not None
    if launch_in < timedelta(0):
        assert waited.outcome is not None and "already past" in waited.outcome
        assert waited.left_at - waited.entered_at < timedelta(minutes=1)
    else:
        assert waited.outcome == "waited"
        assert waited.left_at - waited.entered_at > timedelta(days=19)


async def test_dynamics_no_click_within_a_day_ends_without_sms(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await publish_journey(sessions, _dynamics(None))
    contact_id = await make_contact(sessions, phone="+48500100200")
    _, handle = await start(sessions, client, task_queue, "dynamics-launch", contact_id)

    result = await finish(env, handle)

    assert result.status == "completed"
    assert [(p.step, p.outcome) for p in result.path][-1] == ("clicked_product", "timeout")
    assert await sent_templates(sessions, contact_id) == ["product-announcement"]


async def test_register_not_logged_in_after_3_days_gets_coupon(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await publish_journey(sessions, example("register-coupon"))
    contact_id = await make_contact(sessions, phone="+8613800000000")
    _, handle = await start(sessions, client, task_queue, "register-coupon", contact_id)

    result = await finish(env, handle)

    assert (result.status, result.reason) == ("exited", "activated_or_cared_for")
    assert steps_of(result) == [
        "welcome", "logged_in", "coupon", "tag_coupon", "ordered", "care_sms", "done",
    ]  # fmt: skip
    assert await sent_templates(sessions, contact_id) == ["welcome", "coupon", "care"]
    contact = await reload(sessions, Contact, contact_id)
    assert contact.tags == ["coupon-sent"]
    assert contact.fields["coupons_sent"] == 1


async def test_register_logged_in_gets_no_coupon(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await publish_journey(sessions, example("register-coupon"))
    contact_id = await make_contact(sessions)
    _, handle = await start(sessions, client, task_queue, "register-coupon", contact_id)

    await reach_step(handle, "logged_in")
    await signal_event(handle, kind="custom", name="login")
    result = await finish(env, handle)

    assert steps_of(result) == ["welcome", "logged_in", "done"]
    assert await sent_templates(sessions, contact_id) == ["welcome"]
