"""Goal conversion with HubSpot's semantics (seed 002): who is counted, who converted, resets.

The end-to-end cases run the real worker on the time-skipping server; the counting cases write
enrollment, message and event rows directly, as the engine would have left them.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.enrollment import contact_facts
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    Contact,
    ContactList,
    Enrollment,
    Event,
    Journey,
    ListMembership,
    Message,
    utcnow,
)
from nurture.journeys.conversion import GoalConversion, contacts_facts, goal_conversion
from nurture.journeys.definition import Goal
from nurture.journeys.publishing import latest_version
from tests.support import (
    example,
    finish,
    make_contact,
    ok,
    publish_journey,
    reach_step,
    reload,
    start,
)

HUBSPOT = "hubspot-nurture-goal"


async def conversion(sessions: SessionFactory, key: str = HUBSPOT, **kwargs: Any) -> GoalConversion:
    async with sessions() as session:
        return await goal_conversion(session, key, **kwargs)


def counts(result: GoalConversion) -> dict[str, Any]:
    return {
        "enrolled": result.enrolled,
        "sent": result.sent_marketing_email,
        "met_while": result.met_goal_while_enrolled,
        "met_after": result.met_goal_after,
        "converted": result.converted,
        "rate": result.conversion_rate,
        "refused": result.not_enrolled_goal_already_met,
    }


async def set_fields(sessions: SessionFactory, contact_id: uuid.UUID, **fields: Any) -> None:
    async with sessions.begin() as session:
        contact = await session.get(Contact, contact_id)
        assert contact is not None
        contact.fields = {**contact.fields, **fields}


async def add_enrollment(
    sessions: SessionFactory,
    contact_id: uuid.UUID,
    status: str,
    exit_reason: str | None = None,
    *,
    emails: int = 0,
    key: str = HUBSPOT,
) -> uuid.UUID:
    """An enrollment row as the engine leaves it, with `emails` sent emails of step intro."""
    async with sessions.begin() as session:
        journey = await session.scalar(select(Journey).where(col(Journey.key) == key))
        assert journey is not None
        version = await latest_version(session, journey)
        assert version is not None
        now = utcnow()
        enrollment = Enrollment(
            journey_id=journey.id,
            journey_version_id=version.id,
            version=version.version,
            contact_id=contact_id,
            workflow_id=f"test-{uuid.uuid4()}",
            status=status,
            exit_reason=exit_reason,
            ended_at=None if status in ("pending", "active") else now,
        )
        session.add(enrollment)
        await session.flush()
        for visit in range(1, emails + 1):
            session.add(
                Message(
                    idempotency_key=f"{enrollment.id}:intro:{visit}",
                    enrollment_id=enrollment.id,
                    contact_id=contact_id,
                    step_id="intro",
                    channel="email",
                    template="nurture-intro",
                    status="sent",
                    sent_at=now,
                )
            )
        return enrollment.id


# --- end to end, through the real engine ---------------------------------------------------------


@pytest.mark.usefixtures("worker")
async def test_met_at_entry_is_apart_and_met_after_an_email_converts(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await publish_journey(sessions, example(HUBSPOT))
    customer = await make_contact(sessions, fields={"lifecycle_stage": "customer"})
    lead = await make_contact(sessions, fields={"lifecycle_stage": "lead"})

    _, refused = await start(sessions, client, task_queue, HUBSPOT, customer)
    assert (await finish(env, refused)).reason == "goal_already_met"
    _, handle = await start(sessions, client, task_queue, HUBSPOT, lead)
    await reach_step(handle, "wait_2d")  # the intro email went out
    await set_fields(sessions, lead, lifecycle_stage="customer")
    await handle.signal("contact_changed")
    assert (await finish(env, handle)).reason == "goal_met"

    assert counts(await conversion(sessions)) == {
        "enrolled": 1,
        "sent": 1,
        "met_while": 1,
        "met_after": 0,
        "converted": 1,
        "rate": 1.0,
        "refused": 1,
    }


@pytest.mark.usefixtures("worker")
async def test_goal_met_before_any_email_is_not_a_conversion(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    definition = example(HUBSPOT)
    definition["steps"]["warm_up"] = {"type": "wait", "duration": "1d", "next": "intro"}
    definition["start"] = "warm_up"
    await publish_journey(sessions, definition)
    lead = await make_contact(sessions, fields={"lifecycle_stage": "lead"})
    _, handle = await start(sessions, client, task_queue, HUBSPOT, lead)

    await reach_step(handle, "warm_up")
    await set_fields(sessions, lead, lifecycle_stage="customer")
    await handle.signal("contact_changed")
    assert (await finish(env, handle)).reason == "goal_met"

    assert counts(await conversion(sessions)) == {
        "enrolled": 1,
        "sent": 0,
        "met_while": 1,
        "met_after": 0,
        "converted": 0,
        "rate": 0.0,
        "refused": 0,
    }


@pytest.mark.usefixtures("worker")
async def test_completed_then_met_the_goal_later_converts(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    await publish_journey(sessions, example(HUBSPOT))
    lead = await make_contact(sessions, fields={"lifecycle_stage": "lead"})
    enrollment, handle = await start(sessions, client, task_queue, HUBSPOT, lead)
    assert (await finish(env, handle)).status == "completed"
    assert (await reload(sessions, Enrollment, enrollment.id)).status == "completed"

    before = await conversion(sessions)
    assert (before.enrolled, before.sent_marketing_email, before.converted) == (1, 1, 0)

    await set_fields(sessions, lead, lifecycle_stage="Customer")  # matched as the engine does
    after = await conversion(sessions)
    assert (after.met_goal_while_enrolled, after.met_goal_after, after.converted) == (0, 1, 1)
    assert after.conversion_rate == 1.0


# --- counting rules, on rows as the engine leaves them -------------------------------------------


async def test_a_purchase_after_the_journey_ended_converts(sessions: SessionFactory) -> None:
    """Event criteria are judged on the enrollment's events extended to now, as the workflow
    would have judged them had it still been running."""
    await publish_journey(sessions, example(HUBSPOT))
    buyer = await make_contact(sessions, fields={"lifecycle_stage": "lead"})
    other = await make_contact(sessions, fields={"lifecycle_stage": "lead"})
    await add_enrollment(sessions, buyer, "completed", emails=3)
    await add_enrollment(sessions, other, "exited", "unenrolled", emails=1)
    async with sessions.begin() as session:
        for contact_id, name in ((buyer, "purchase"), (other, "login")):
            session.add(
                Event(dedupe_key=str(uuid.uuid4()), contact_id=contact_id, kind="custom", name=name)
            )

    result = await conversion(sessions)
    assert (result.enrolled, result.met_goal_after, result.converted) == (2, 1, 1)
    assert result.conversion_rate == 0.5


async def test_a_purchase_before_the_enrollment_does_not_count(sessions: SessionFactory) -> None:
    await publish_journey(sessions, example(HUBSPOT))
    lead = await make_contact(sessions, fields={"lifecycle_stage": "lead"})
    async with sessions.begin() as session:
        session.add(
            Event(
                dedupe_key="early",
                contact_id=lead,
                kind="custom",
                name="purchase",
                received_at=utcnow() - timedelta(days=30),
            )
        )
    await add_enrollment(sessions, lead, "completed", emails=1)

    assert (await conversion(sessions)).met_goal_after == 0


async def test_a_later_click_meets_a_click_goal(sessions: SessionFactory) -> None:
    definition = example(HUBSPOT)
    definition["goal"] = {"criteria": {"type": "clicked", "step": "intro", "link": "buy"}}
    await publish_journey(sessions, definition)
    clicker, machine = (await make_contact(sessions), await make_contact(sessions))
    for contact_id in (clicker, machine):
        enrollment_id = await add_enrollment(sessions, contact_id, "completed", emails=1)
        async with sessions.begin() as session:
            session.add(
                Event(
                    dedupe_key=str(uuid.uuid4()),
                    contact_id=contact_id,
                    kind="click",
                    link="buy",
                    message_id=await session.scalar(
                        select(col(Message.id)).where(col(Message.enrollment_id) == enrollment_id)
                    ),
                    machine=contact_id == machine,  # a link scanner is not the contact
                )
            )

    result = await conversion(sessions)
    assert (result.enrolled, result.met_goal_after, result.converted) == (2, 1, 1)


async def test_removing_the_goal_resets_the_counts(sessions: SessionFactory) -> None:
    definition = example(HUBSPOT)
    await publish_journey(sessions, definition)
    met = await make_contact(sessions, fields={"lifecycle_stage": "lead"})
    done = await make_contact(sessions, fields={"lifecycle_stage": "customer"})
    refused = await make_contact(sessions, fields={"lifecycle_stage": "customer"})
    await add_enrollment(sessions, met, "exited", "goal_met", emails=1)
    await add_enrollment(sessions, done, "completed", emails=3)
    await add_enrollment(sessions, refused, "not_enrolled", "goal_already_met")
    before = await conversion(sessions)
    assert (before.enrolled, before.converted, before.not_enrolled_goal_already_met) == (2, 2, 1)
    assert before.counting_since is None

    definition.pop("goal")
    await publish_journey(sessions, definition)
    after = await conversion(sessions)
    assert after.goal is None
    assert after.counting_since is not None
    assert counts(after) == {
        "enrolled": 0,
        "sent": 0,
        "met_while": 0,
        "met_after": 0,
        "converted": 0,
        "rate": None,
        "refused": 0,
    }

    # Counting goes on from the reset; adding a goal back does not move it.
    await add_enrollment(sessions, await make_contact(sessions), "completed", emails=1)
    definition["goal"] = example(HUBSPOT)["goal"]
    await publish_journey(sessions, definition)
    again = await conversion(sessions)
    assert again.counting_since == after.counting_since
    assert (again.enrolled, again.sent_marketing_email, again.converted) == (1, 1, 0)


async def test_editing_the_goal_keeps_the_history(sessions: SessionFactory) -> None:
    definition = example(HUBSPOT)
    await publish_journey(sessions, definition)
    met = await make_contact(sessions, fields={"lifecycle_stage": "lead"})
    paid = await make_contact(sessions, fields={"lifecycle_stage": "paid customer"})
    await add_enrollment(sessions, met, "exited", "goal_met", emails=1)
    await add_enrollment(sessions, paid, "completed", emails=2)
    assert (await conversion(sessions)).converted == 1

    definition["goal"] = {
        "name": "paid",
        "criteria": {
            "type": "field",
            "field": "lifecycle_stage",
            "op": "eq",
            "value": "paid customer",
        },
    }
    await publish_journey(sessions, definition)
    result = await conversion(sessions)
    assert result.counting_since is None
    assert result.goal is not None and result.goal.name == "paid"
    # The earlier goal_met stays; ended enrollments are judged on the goal as it is now.
    assert (result.enrolled, result.met_goal_while_enrolled, result.met_goal_after) == (2, 1, 1)
    assert result.converted == 2


async def test_a_contact_enrolled_twice_counts_once(sessions: SessionFactory) -> None:
    await publish_journey(sessions, example(HUBSPOT))
    twice = await make_contact(sessions, fields={"lifecycle_stage": "customer"})
    await add_enrollment(sessions, twice, "completed", emails=3)
    await add_enrollment(sessions, twice, "exited", "goal_met")
    await add_enrollment(sessions, twice, "not_enrolled", "goal_already_met")
    await add_enrollment(sessions, twice, "not_enrolled", "goal_already_met")

    assert counts(await conversion(sessions)) == {
        "enrolled": 1,
        "sent": 1,
        "met_while": 1,
        "met_after": 0,  # already counted as met while enrolled
        "converted": 1,
        "rate": 1.0,
        "refused": 1,
    }


async def test_in_flight_and_other_journeys_do_not_convert(sessions: SessionFactory) -> None:
    await publish_journey(sessions, example(HUBSPOT))
    await publish_journey(sessions, example(HUBSPOT) | {"key": "other"})
    customer = await make_contact(sessions, fields={"lifecycle_stage": "customer"})
    await add_enrollment(sessions, customer, "active", emails=1)  # its workflow will exit it
    await add_enrollment(sessions, customer, "exited", "goal_met", emails=1, key="other")

    result = await conversion(sessions)
    assert (result.enrolled, result.sent_marketing_email, result.converted) == (1, 1, 0)


async def test_met_after_is_counted_page_by_page(sessions: SessionFactory) -> None:
    await publish_journey(sessions, example(HUBSPOT))
    for stage in ("customer", "lead", "customer", "customer", "lead"):
        contact_id = await make_contact(sessions, fields={"lifecycle_stage": stage})
        await add_enrollment(sessions, contact_id, "completed", emails=1)

    for page_size in (1, 2, 500):
        result = await conversion(sessions, page_size=page_size)
        assert (result.enrolled, result.met_goal_after, result.converted) == (5, 3, 3)


async def test_contact_facts_are_built_as_the_workflow_builds_them(
    sessions: SessionFactory,
) -> None:
    contact_id = await make_contact(
        sessions, fields={"plan": "pro"}, tags=["vip"], time_zone="Europe/Warsaw", phone="+48500"
    )
    async with sessions.begin() as session:
        for key in ("b-list", "a-list"):
            listed = ContactList(key=key, name=key)
            session.add(listed)
            await session.flush()
            session.add(ListMembership(list_id=listed.id, contact_id=contact_id))
    async with sessions() as session:
        assert (await contacts_facts(session, [contact_id]))[contact_id] == await contact_facts(
            session, contact_id
        )


async def test_nobody_enrolled_has_no_rate(sessions: SessionFactory) -> None:
    await publish_journey(sessions, example(HUBSPOT))
    result = await conversion(sessions)
    assert result.goal is not None and result.goal.name == "became a customer"
    assert (result.enrolled, result.conversion_rate) == (0, None)


# --- API -------------------------------------------------------------------------------------


async def test_api_goal_conversion(api: httpx.AsyncClient, sessions: SessionFactory) -> None:
    await publish_journey(sessions, example(HUBSPOT))
    contact_id = await make_contact(sessions, fields={"lifecycle_stage": "lead"})
    await add_enrollment(sessions, contact_id, "exited", "goal_met", emails=1)

    body = ok(await api.get(f"/v1/journeys/{HUBSPOT}/goal"))
    assert body == {
        "journey_key": HUBSPOT,
        "goal": Goal.model_validate(example(HUBSPOT)["goal"]).model_dump(mode="json"),
        "counting_since": None,
        "enrolled": 1,
        "sent_marketing_email": 1,
        "met_goal_while_enrolled": 1,
        "met_goal_after": 0,
        "converted": 1,
        "conversion_rate": 1.0,
        "not_enrolled_goal_already_met": 0,
    }


async def test_api_goal_conversion_of_an_unknown_journey(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/journeys/nope/goal")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
