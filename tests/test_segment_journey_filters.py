"""Segments that speak of journeys (HubSpot's "met the goal of workflow X" list filter):
`met_goal` counts the contacts the goal-conversion report counts as having met the goal, and
`enrolled_in` can name a published version. End to end on the real worker, and on enrollment
rows as the engine leaves them for the goal's every kind of condition."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.audience.segments import compiler, service
from nurture.db.engine import SessionFactory
from nurture.db.models import ContactList, Enrollment, Event, ListMembership, Message, utcnow
from tests.support import (
    enrolled_in,
    example,
    exits_at_once,
    finish,
    make_contact,
    ok,
    problems,
    publish_journey,
    reach_step,
    start,
)
from tests.test_goal_conversion import HUBSPOT, add_enrollment, conversion, set_fields

MET: dict[str, Any] = {"type": "met_goal", "journey": HUBSPOT}


async def members(sessions: SessionFactory, filter: dict[str, Any]) -> set[uuid.UUID]:
    async with sessions() as session:
        query = service.members_query(service.parse_filter(filter))
        return set(await session.scalars(query))


async def converted_while_enrolled(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> uuid.UUID:
    """A lead enrolled in the HubSpot seed who becomes a customer after the first email: the
    enrollment exits with goal_met."""
    lead = await make_contact(sessions, fields={"lifecycle_stage": "lead"})
    _, handle = await start(sessions, client, task_queue, HUBSPOT, lead)
    await reach_step(handle, "wait_2d")
    await set_fields(sessions, lead, lifecycle_stage="customer")
    await handle.signal("contact_changed")
    assert (await finish(env, handle)).reason == "goal_met"
    return lead


async def completed(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> uuid.UUID:
    """A lead who goes through the whole HubSpot seed without meeting the goal."""
    lead = await make_contact(sessions, fields={"lifecycle_stage": "lead"})
    _, handle = await start(sessions, client, task_queue, HUBSPOT, lead)
    assert (await finish(env, handle)).status == "completed"
    return lead


# --- end to end, through the real engine ---------------------------------------------------------


@pytest.mark.usefixtures("worker")
async def test_met_goal_while_enrolled_or_after_the_journey_ended_but_not_refused_at_entry(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    await publish_journey(sessions, example(HUBSPOT))
    converted = await converted_while_enrolled(sessions, client, env, task_queue)
    later = await completed(sessions, client, env, task_queue)
    never = await completed(sessions, client, env, task_queue)
    customer = await make_contact(sessions, fields={"lifecycle_stage": "customer"})
    _, refused = await start(sessions, client, task_queue, HUBSPOT, customer)
    assert (await finish(env, refused)).reason == "goal_already_met"

    assert await members(sessions, MET) == {converted}
    # Meets the goal after the journey ended: counted from then on, as the report counts it.
    await set_fields(sessions, later, lifecycle_stage="Customer")
    assert await members(sessions, MET) == {converted, later}
    report = await conversion(sessions)
    assert report.met_goal_while_enrolled + report.met_goal_after == 2
    assert report.not_enrolled_goal_already_met == 1  # the customer, never enrolled
    # enrolled_in with goal_met finds only who met it while enrolled.
    while_enrolled = {"type": "enrolled_in", "journey": HUBSPOT, "exit_reason": "goal_met"}
    assert await members(sessions, while_enrolled) == {converted}
    assert never not in await members(sessions, MET)

    previewed = ok(await api.post("/v1/segments/preview", json={"filter": MET}))
    assert previewed["count"] == 2
    assert {item["id"] for item in previewed["items"]} == {str(converted), str(later)}
    ok(await api.put("/v1/segments/converted", json={"name": "Converted", "filter": MET}), 201)
    assert ok(await api.post("/v1/segments/converted/count")) == {"count": 2}


@pytest.mark.usefixtures("worker")
async def test_an_exclusion_segment_of_converted_contacts_keeps_them_out_of_the_next_journey(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    await publish_journey(sessions, example(HUBSPOT))
    ok(await api.put("/v1/segments/converted", json={"name": "Converted", "filter": MET}), 201)
    upsell = exits_at_once("upsell", {"type": "api"}, entry={"exclusion_segment": "converted"})
    await publish_journey(sessions, upsell)
    converted = await converted_while_enrolled(sessions, client, env, task_queue)
    lead = await completed(sessions, client, env, task_queue)

    refused = await api.post(
        "/v1/enrollments", json={"journey_key": "upsell", "contact_id": str(converted)}
    )
    admitted = await api.post(
        "/v1/enrollments", json={"journey_key": "upsell", "contact_id": str(lead)}
    )

    assert refused.status_code == 409, refused.text
    assert "exclusion segment 'converted'" in refused.json()["detail"]
    assert admitted.status_code == 201, admitted.text


@pytest.mark.usefixtures("worker")
async def test_meeting_the_goal_after_the_journey_is_an_entry_into_a_watched_segment(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    await publish_journey(sessions, example(HUBSPOT))
    lee = await make_contact(sessions, external_id="lee", fields={"lifecycle_stage": "lead"})
    _, handle = await start(sessions, client, task_queue, HUBSPOT, lee)
    assert (await finish(env, handle)).status == "completed"
    ok(await api.put("/v1/segments/converted", json={"name": "Converted", "filter": MET}), 201)
    await publish_journey(
        sessions, exits_at_once("thanks", {"type": "segment_entered", "segment": "converted"})
    )

    ok(await api.put("/v1/contacts/lee", json={"fields": {"lifecycle_stage": "customer"}}))

    assert await enrolled_in(sessions, "thanks") == ["lee"]


@pytest.mark.usefixtures("worker")
async def test_enrolled_in_a_published_version(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    journey = exits_at_once("onboarding", {"type": "api"})
    assert await publish_journey(sessions, journey) == 1
    first = await make_contact(sessions)
    _, handle = await start(sessions, client, task_queue, "onboarding", first)
    await finish(env, handle)
    assert await publish_journey(sessions, {**journey, "name": "Onboarding, again"}) == 2
    second = await make_contact(sessions)
    _, handle = await start(sessions, client, task_queue, "onboarding", second)
    await finish(env, handle)

    def enrolled(**keys: Any) -> dict[str, Any]:
        return {"type": "enrolled_in", "journey": "onboarding", **keys}

    assert await members(sessions, enrolled(version=1)) == {first}
    assert await members(sessions, enrolled(version=2)) == {second}
    assert await members(sessions, enrolled()) == {first, second}
    assert await members(sessions, enrolled(version=3)) == set()  # not published (yet)
    assert await members(sessions, enrolled(version=2, exit_reason="done")) == {second}
    not_in_1 = {"type": "not", "condition": enrolled(version=1)}
    assert await members(sessions, not_in_1) == {second}


# --- the goal's conditions, on rows as the engine leaves them -------------------------------------

Contacts = dict[str, uuid.UUID]


# Contacts whose one enrollment ended (completed), and what they are like now.
ENDED: dict[str, dict[str, Any]] = {
    "stage": {"fields": {"lifecycle_stage": "Customer"}},
    "pro": {"fields": {"score": 10, "plan": "pro"}, "tags": ["VIP"]},
    "text_score": {"fields": {"score": "10", "plan": ""}},
    "no_email": {"email": None, "time_zone": "Europe/Warsaw"},
    "golfer": {"fields": {"interests": ["Golf", "tennis"]}},
    "clicker": {},
    "bot": {},
    "buyer": {},
    "early_buyer": {},
}


async def population(sessions: SessionFactory) -> Contacts:
    """Contacts with one ended enrollment each in the HubSpot seed (one email, step intro),
    plus one that met the goal while enrolled, one refused at entry, one still enrolled."""
    await publish_journey(sessions, example(HUBSPOT))
    async with sessions.begin() as session:
        session.add(ContactList(key="paid", name="paid"))
    ids = {name: await make_contact(sessions, **values) for name, values in ENDED.items()}
    ended = {}
    for name in ids:
        ended[name] = await add_enrollment(sessions, ids[name], "completed", emails=1)
    for name, values in (
        ("converted", {"fields": {"lifecycle_stage": "lead"}}),
        ("refused", {"fields": {"lifecycle_stage": "customer"}, "tags": ["vip"]}),
        ("in_flight", {"fields": {"lifecycle_stage": "customer"}, "tags": ["vip"]}),
    ):
        ids[name] = await make_contact(sessions, **values)
    await add_enrollment(sessions, ids["converted"], "exited", "goal_met", emails=1)
    await add_enrollment(sessions, ids["refused"], "not_enrolled", "goal_already_met")
    await add_enrollment(sessions, ids["in_flight"], "active", emails=1)

    async with sessions.begin() as session:
        paid = await session.scalar(select(col(ContactList.id)).where(ContactList.key == "paid"))
        assert paid is not None
        session.add(ListMembership(list_id=paid, contact_id=ids["pro"]))
        for name in ("clicker", "bot"):
            message_id = await session.scalar(
                select(col(Message.id)).where(col(Message.enrollment_id) == ended[name])
            )
            session.add(
                Event(
                    dedupe_key=str(uuid.uuid4()),
                    contact_id=ids[name],
                    kind="click",
                    link="buy",
                    message_id=message_id,
                    machine=name == "bot",  # a link scanner is not the contact
                )
            )
        for name, received_at in (
            ("buyer", utcnow()),
            ("early_buyer", utcnow() - timedelta(days=30)),  # before it was enrolled
        ):
            session.add(
                Event(
                    dedupe_key=str(uuid.uuid4()),
                    contact_id=ids[name],
                    kind="custom",
                    name="purchase",
                    received_at=received_at,
                )
            )
    return ids


def field(name: str, op: str, value: Any = None) -> dict[str, Any]:
    condition = {"type": "field", "field": name, "op": op}
    return condition if value is None else {**condition, "value": value}


def not_(condition: dict[str, Any]) -> dict[str, Any]:
    return {"type": "not", "condition": condition}


# A goal, and who meets it after their enrollment ended (besides "converted", who met it while
# enrolled: every case finds it too). Each is also checked against the goal-conversion report.
GOALS: list[tuple[str, dict[str, Any], set[str]]] = [
    ("field eq ignores case", field("lifecycle_stage", "eq", "customer"), {"stage"}),
    ("number gt", field("score", "gt", 5), {"pro"}),  # "10" is text: not comparable
    ("number eq", field("score", "eq", 10.0), {"pro"}),
    ("ne holds when missing", field("plan", "ne", "PRO"), set(ENDED) - {"pro"}),
    ("an empty value is missing", field("plan", "exists"), {"pro"}),
    ("email not_exists", field("email", "not_exists"), {"no_email"}),
    ("time_zone eq", field("time_zone", "eq", "europe/warsaw"), {"no_email"}),
    ("array contains", field("interests", "contains", "GOLF"), {"golfer"}),
    ("text contains", field("lifecycle_stage", "contains", "stom"), {"stage"}),
    ("in", field("plan", "in", ["x", "Pro"]), {"pro"}),
    ("not_in holds when missing", field("plan", "not_in", ["pro"]), set(ENDED) - {"pro"}),
    ("string lte", field("lifecycle_stage", "lte", "cz"), {"stage"}),
    ("tag ignores case", {"type": "tag", "tag": "vip"}, {"pro"}),
    ("in_list", {"type": "in_list", "list": "paid"}, {"pro"}),
    (
        "clicked a link of a step, by a person",
        {"type": "clicked", "step": "intro", "link": "buy"},
        {"clicker"},
    ),
    ("a click is an open", {"type": "opened", "step": "intro"}, {"clicker"}),
    ("opened twice", {"type": "opened", "min_count": 2}, set()),
    ("event since the enrollment", {"type": "event", "name": "purchase"}, {"buyer"}),
    (
        "not any",
        not_(
            {"type": "any", "conditions": [{"type": "tag", "tag": "vip"}, field("plan", "exists")]}
        ),
        set(ENDED) - {"pro"},
    ),
    (
        "all with a not",
        {"type": "all", "conditions": [field("score", "exists"), not_(field("score", "gt", 5))]},
        {"text_score"},
    ),
    (
        "deep",
        {
            "type": "any",
            "conditions": [
                {"type": "all", "conditions": [not_(not_({"type": "tag", "tag": "VIP"}))]},
                {"type": "event", "name": "refund"},
            ],
        },
        {"pro"},
    ),
]


@pytest.mark.parametrize(
    ("criteria", "met_after"), [g[1:] for g in GOALS], ids=[g[0] for g in GOALS]
)
async def test_the_goal_is_judged_as_the_conversion_report_judges_it(
    sessions: SessionFactory, criteria: dict[str, Any], met_after: set[str]
) -> None:
    ids = await population(sessions)
    definition = example(HUBSPOT)
    definition["goal"] = {"criteria": criteria}
    await publish_journey(sessions, definition)

    found = await members(sessions, MET)

    assert found == {ids[name] for name in met_after | {"converted"}}
    report = await conversion(sessions)
    assert report.met_goal_while_enrolled + report.met_goal_after == len(found)


async def test_a_goal_nested_too_deep_is_not_judged_after_the_journey(
    sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await population(sessions)
    definition = example(HUBSPOT)
    definition["goal"] = {"criteria": not_(not_({"type": "tag", "tag": "vip"}))}
    await publish_journey(sessions, definition)
    assert await members(sessions, MET) == {ids["pro"], ids["converted"]}

    monkeypatch.setattr(compiler, "GOAL_NESTING", 1)
    assert await members(sessions, MET) == {ids["converted"]}  # exits with goal_met still count


async def test_within_days_looks_at_when_the_enrollment_started(sessions: SessionFactory) -> None:
    ids = await population(sessions)
    async with sessions.begin() as session:
        await session.execute(
            update(Enrollment)
            .where(col(Enrollment.contact_id) == ids["stage"])
            .values(enrolled_at=utcnow() - timedelta(days=40))
        )
    recent = {**MET, "within_days": 30}

    assert await members(sessions, MET) == {ids["stage"], ids["buyer"], ids["converted"]}
    assert await members(sessions, recent) == {ids["buyer"], ids["converted"]}


async def test_removing_the_goal_resets_who_met_it_as_it_resets_the_report(
    sessions: SessionFactory,
) -> None:
    ids = await population(sessions)
    definition = example(HUBSPOT)
    assert await members(sessions, MET) == {ids["stage"], ids["buyer"], ids["converted"]}

    await publish_journey(sessions, {k: v for k, v in definition.items() if k != "goal"})
    assert await members(sessions, MET) == set()
    assert (await conversion(sessions)).met_goal_while_enrolled == 0

    # Counting goes on from the reset: a later enrollment that exits with goal_met counts.
    await publish_journey(sessions, definition)
    await add_enrollment(sessions, ids["converted"], "exited", "goal_met")
    assert await members(sessions, MET) == {ids["converted"]}


async def test_journey_filters_are_checked_like_the_others(api: httpx.AsyncClient) -> None:
    async def refused(filter: dict[str, Any]) -> dict[str, str]:
        return problems(await api.post("/v1/segments/preview", json={"filter": filter}))

    assert await refused({"type": "all", "conditions": [MET, {**MET, "journey": "nope"}]}) == {
        "filter.conditions.0.journey": f"no journey {HUBSPOT!r}",
        "filter.conditions.1.journey": "no journey 'nope'",
    }
    version_0 = await refused({"type": "enrolled_in", "journey": "x", "version": 0})
    assert version_0["filter.version"] == "Input should be greater than or equal to 1"
    assert "filter.status" in await refused({**MET, "status": "completed"})
    assert "filter.within_days" in await refused({**MET, "within_days": 0})
