"""Lists through the HTTP API: create, read, add members (starting list-triggered journeys),
remove members (telling their enrollments)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.contracts import EnrollmentResult
from nurture.db.engine import SessionFactory
from nurture.db.models import BulkEnrollment, Enrollment, Journey, ListMembership
from tests.support import (
    example,
    exits_at_once,
    finish,
    ok,
    problems,
    publish_journey,
    reach_step,
    sent_templates,
)


async def new_contact(api: httpx.AsyncClient, external_id: str) -> str:
    body = ok(
        await api.put(f"/v1/contacts/{external_id}", json={"email": f"{external_id}@example.com"}),
        201,
    )
    return str(body["id"])


async def enrollment_handle(api: httpx.AsyncClient, client: Client, enrollment_id: str) -> Any:
    """The workflow of an enrollment started through the API (terminated after the test)."""
    workflow_id = ok(await api.get(f"/v1/enrollments/{enrollment_id}"))["workflow_id"]
    return client.get_workflow_handle(workflow_id, result_type=EnrollmentResult)


async def test_create_read_and_list_lists(api: httpx.AsyncClient) -> None:
    created = await api.post("/v1/lists", json={"key": "newsletter", "name": "Newsletter"})
    ok(await api.post("/v1/lists", json={"key": "customers", "name": "Customers"}), 201)
    duplicate = await api.post("/v1/lists", json={"key": "newsletter", "name": "Again"})
    bad = await api.post("/v1/lists", json={"key": "News Letter", "name": ""})

    read = ok(await api.get("/v1/lists/newsletter"))
    listed = ok(await api.get("/v1/lists"))
    second = ok(await api.get("/v1/lists", params={"limit": 1, "offset": 1}))
    unknown = await api.get("/v1/lists/nope")

    assert created.status_code == 201, created.text
    assert {k: v for k, v in created.json().items() if k != "created_at"} == {
        "key": "newsletter", "name": "Newsletter", "member_count": 0,
    }  # fmt: skip
    assert duplicate.status_code == 409
    assert duplicate.json() == {"error": "conflict", "detail": "list 'newsletter' already exists"}
    assert set(problems(bad)) == {"body.key", "body.name"}
    assert read == created.json()
    assert [item["key"] for item in listed["items"]] == ["customers", "newsletter"]
    assert [item["key"] for item in second["items"]] == ["newsletter"]
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "not_found", "detail": "no list 'nope'"}


async def test_add_and_remove_members(api: httpx.AsyncClient, sessions: SessionFactory) -> None:
    ok(await api.post("/v1/lists", json={"key": "vip", "name": "VIP"}), 201)
    ada, bob = await new_contact(api, "ada"), await new_contact(api, "bob")
    ghost = str(uuid.uuid4())

    with_unknown = await api.post("/v1/lists/vip/members", json={"contact_ids": [ada, ghost]})
    count_after_refusal = ok(await api.get("/v1/lists/vip"))["member_count"]
    first = ok(await api.post("/v1/lists/vip/members", json={"contact_ids": [ada, ada]}))
    second = ok(await api.post("/v1/lists/vip/members", json={"contact_ids": [bob, ada]}))
    counted = ok(await api.get("/v1/lists/vip"))["member_count"]
    ada_lists = ok(await api.get(f"/v1/contacts/{ada}"))["lists"]
    removed = await api.delete(f"/v1/lists/vip/members/{ada}")
    removed_again = await api.delete(f"/v1/lists/vip/members/{ada}")
    errors = {
        "unknown list": await api.post("/v1/lists/nope/members", json={"contact_ids": [ada]}),
        "remove from unknown list": await api.delete(f"/v1/lists/nope/members/{ada}"),
        "remove unknown contact": await api.delete(f"/v1/lists/vip/members/{ghost}"),
    }
    empty = await api.post("/v1/lists/vip/members", json={"contact_ids": []})
    not_ids = await api.post("/v1/lists/vip/members", json={"contact_ids": ["ada"]})

    assert with_unknown.status_code == 404
    assert with_unknown.json()["detail"] == [ghost]
    assert ghost in with_unknown.json()["message"]
    assert count_after_refusal == 0  # all or nothing: ada was not added either
    assert first == {"added": [ada], "already_members": [], "enrollments_started": []}
    assert second == {"added": [bob], "already_members": [ada], "enrollments_started": []}
    assert counted == 2
    assert ada_lists == ["vip"]
    assert (removed.status_code, removed_again.status_code) == (204, 204)
    assert ok(await api.get(f"/v1/contacts/{ada}"))["lists"] == []
    assert {name: r.status_code for name, r in errors.items()} == dict.fromkeys(errors, 404)
    assert list(problems(empty)) == ["body.contact_ids"]
    assert list(problems(not_ids)) == ["body.contact_ids.0"]
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(ListMembership)) == 1


async def _benchmark_welcome(api: httpx.AsyncClient) -> None:
    """benchmark-welcome starts when a contact joins "newsletter"; it may add to "paid-customers"."""
    for key in ("newsletter", "paid-customers"):
        ok(await api.post("/v1/lists", json={"key": key, "name": key}), 201)
    for template in ("welcome", "welcome-follow-up"):
        ok(await api.put(f"/v1/templates/email/{template}", json={"subject": "s", "text": "t"}))
    ok(await api.post("/v1/journeys", json=example("benchmark-welcome")), 201)
    ok(await api.post("/v1/journeys/benchmark-welcome/publish"), 201)


@pytest.mark.usefixtures("worker")
async def test_joining_a_list_starts_the_journeys_it_triggers_once(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
) -> None:
    await _benchmark_welcome(api)
    ada, bob = await new_contact(api, "ada"), await new_contact(api, "bob")

    joined = ok(await api.post("/v1/lists/newsletter/members", json={"contact_ids": [ada]}))
    [enrollment_id] = joined["enrollments_started"]
    handle = await enrollment_handle(api, client, enrollment_id)
    await reach_step(handle, "wait_1d")
    # Ada is a member already: only Bob joins now, and only Bob's journey starts.
    both = ok(await api.post("/v1/lists/newsletter/members", json={"contact_ids": [ada, bob]}))
    result = await finish(env, handle)

    assert (joined["added"], joined["already_members"]) == ([ada], [])
    assert (both["added"], both["already_members"]) == ([bob], [ada])
    [bob_enrollment] = both["enrollments_started"]
    await enrollment_handle(api, client, bob_enrollment)
    assert result.status == "completed"
    assert await sent_templates(sessions, uuid.UUID(ada)) == ["welcome", "welcome-follow-up"]
    async with sessions() as session:
        per_contact = dict(
            (
                await session.execute(
                    select(col(Enrollment.contact_id), func.count()).group_by(
                        col(Enrollment.contact_id)
                    )
                )
            ).all()
        )
    assert per_contact == {uuid.UUID(ada): 1, uuid.UUID(bob): 1}
    [summary] = ok(await api.get(f"/v1/contacts/{ada}"))["enrollments"]
    assert (summary["id"], summary["journey_key"]) == (enrollment_id, "benchmark-welcome")


# After a day, a branch on list membership: still a member -> "stayed", else "left".
MEMBERSHIP_CHECK: dict[str, Any] = {
    "key": "membership-check",
    "name": "Check membership after a day",
    "start": "wait_1d",
    "steps": {
        "wait_1d": {"type": "wait", "duration": "1d", "next": "still_in"},
        "still_in": {
            "type": "branch",
            "rules": [{"condition": {"type": "in_list", "list": "vip"}, "next": "stayed"}],
            "default": "left",
        },
        "stayed": {"type": "send_email", "template": "stayed"},
        "left": {"type": "send_email", "template": "left"},
    },
}


@pytest.mark.usefixtures("worker")
async def test_removing_a_member_tells_its_enrollments(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, env: WorkflowEnvironment
) -> None:
    ok(await api.post("/v1/lists", json={"key": "vip", "name": "VIP"}), 201)
    await publish_journey(sessions, MEMBERSHIP_CHECK)
    ada = await new_contact(api, "ada")
    ok(await api.post("/v1/lists/vip/members", json={"contact_ids": [ada]}))
    enrolled = ok(
        await api.post(
            "/v1/enrollments", json={"journey_key": "membership-check", "contact_id": ada}
        ),
        201,
    )
    handle = await enrollment_handle(api, client, enrolled["id"])
    await reach_step(handle, "wait_1d")

    removed = await api.delete(f"/v1/lists/vip/members/{ada}")
    result = await finish(env, handle)

    assert removed.status_code == 204
    assert [p.step for p in result.path] == ["wait_1d", "still_in", "left"]
    assert await sent_templates(sessions, uuid.UUID(ada)) == ["left"]


async def test_members_are_paged_by_contact_id(api: httpx.AsyncClient) -> None:
    ok(await api.post("/v1/lists", json={"key": "webinar", "name": "Webinar"}), 201)
    ids = sorted([await new_contact(api, f"m{n}") for n in range(5)])
    ok(await api.post("/v1/lists/webinar/members", json={"contact_ids": ids}))

    first = ok(await api.get("/v1/lists/webinar/members", params={"limit": 3}))
    second = ok(
        await api.get(
            "/v1/lists/webinar/members", params={"limit": 3, "after": first["next_after"]}
        )
    )
    missing = await api.get("/v1/lists/nope/members")

    assert [m["contact_id"] for m in first["items"]] == ids[:3]
    assert [m["contact_id"] for m in second["items"]] == ids[3:]
    assert second["next_after"] is None
    assert {m["email"] for m in first["items"] + second["items"]} == {
        f"m{n}@example.com" for n in range(5)
    }
    assert missing.status_code == 404


async def test_a_list_that_starts_a_journey_cannot_be_deleted(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.post("/v1/lists", json={"key": "trial", "name": "Trial"}), 201)
    ok(await api.post("/v1/lists", json={"key": "old", "name": "Old"}), 201)
    contact_id = await new_contact(api, "ada")
    ok(await api.post("/v1/lists/old/members", json={"contact_ids": [contact_id]}))
    trigger = {"type": "list_joined", "list": "trial"}
    await publish_journey(sessions, exits_at_once("trial-welcome", trigger))

    refused = await api.delete("/v1/lists/trial")
    deleted = await api.delete("/v1/lists/old")
    gone = await api.get("/v1/lists/old")
    contact = ok(await api.get(f"/v1/contacts/{contact_id}"))

    assert refused.status_code == 409
    assert "trial-welcome" in refused.json()["detail"]
    assert deleted.status_code == 204
    assert gone.status_code == 404
    assert contact["lists"] == []  # the contact stays; only the membership went


@pytest.mark.usefixtures("worker")
async def test_only_new_false_also_takes_the_members_the_list_has_at_publish(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.post("/v1/lists", json={"key": "club", "name": "Club"}), 201)
    members = [await new_contact(api, f"member-{n}") for n in range(3)]
    ok(await api.post("/v1/lists/club/members", json={"contact_ids": members}))
    for key, only_new in (("club-all", False), ("club-new", True)):
        trigger = {"type": "list_joined", "list": "club", "only_new": only_new}
        definition = exits_at_once(key, trigger)
        ok(await api.post("/v1/journeys", json=definition), 201)
        ok(await api.post(f"/v1/journeys/{key}/publish"), 201)
        ok(await api.post(f"/v1/journeys/{key}/publish"), 201)  # again: no second run

    async with asyncio.timeout(30):
        while True:
            async with sessions() as session:
                bulk = await session.scalar(
                    select(BulkEnrollment).where(
                        col(BulkEnrollment.workflow_id) == "audience:club-all:members"
                    )
                )
            if bulk is not None and bulk.status == "completed":
                break
            await asyncio.sleep(0.05)
    async with sessions() as session:
        enrolled = {
            key: count
            for key, count in await session.execute(
                select(col(Journey.key), func.count())
                .join(Enrollment, col(Enrollment.journey_id) == col(Journey.id))
                .group_by(col(Journey.key))
            )
        }
        runs = await session.scalar(select(func.count()).select_from(BulkEnrollment))

    assert enrolled == {"club-all": 3}
    assert runs == 1
