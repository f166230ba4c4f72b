"""Definitions read back in the order written, version diffs, clones, starters, and the
owner, tags and description of journeys (docs/launching.md, docs/journeys.md)."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, select

from nurture.db.engine import SessionFactory
from nurture.db.models import Journey, JourneyVersion, Template
from nurture.journeys.diff import diff
from nurture.journeys.ordering import capture, journey_order, restore
from nurture.journeys.starters import starters
from tests.support import example, ok


def _written() -> dict[str, Any]:
    # Written on purpose in an order jsonb would not keep: it sorts keys shortest first.
    return {
        "name": "Written order",
        "key": "ordered",
        "trigger": {"type": "api"},
        "start": "welcome",
        "steps": {
            "welcome": {"type": "send_email", "template": "hello", "next": "wait_a_while"},
            "wait_a_while": {"type": "wait", "duration": "1d", "next": "thanks"},
            "thanks": {"next": None, "type": "send_email", "template": "hello"},
        },
    }


async def test_a_draft_and_its_versions_keep_the_order_they_were_written_in(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/templates/email/hello", json={"subject": "Hello", "text": "Hi"}))
    written = _written()
    draft = ok(await api.post("/v1/journeys", json=written), 201)["draft"]
    assert list(draft) == list(written)
    assert list(draft["steps"]) == ["welcome", "wait_a_while", "thanks"]
    assert list(draft["steps"]["thanks"]) == ["next", "type", "template"]
    async with sessions() as session:  # stored as jsonb, which did reorder them
        stored = await session.scalar(select(Journey.draft).where(col(Journey.key) == "ordered"))
    assert list(stored["steps"]) != ["welcome", "wait_a_while", "thanks"]

    live = ok(await api.post("/v1/journeys/ordered/publish"), 201)["definition"]
    assert list(live["steps"]) == ["welcome", "wait_a_while", "thanks"]
    assert list(live)[:5] == ["name", "key", "trigger", "start", "steps"]  # defaults after
    again = ok(await api.get("/v1/journeys/ordered"))
    assert list(again["live"]["definition"]["steps"]) == ["welcome", "wait_a_while", "thanks"]
    assert list(again["draft"]["steps"]) == ["welcome", "wait_a_while", "thanks"]


async def test_rows_saved_before_the_order_was_kept_read_in_journey_order(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/templates/email/hello", json={"subject": "Hello", "text": "Hi"}))
    ok(await api.post("/v1/journeys", json=_written()), 201)
    ok(await api.post("/v1/journeys/ordered/publish"), 201)
    async with sessions.begin() as session:  # as the migration leaves older rows
        await session.execute(update(Journey).values(draft_order=None))
    draft = ok(await api.get("/v1/journeys/ordered"))["draft"]
    assert list(draft) == ["key", "name", "trigger", "start", "steps"]
    assert list(draft["steps"]) == ["welcome", "wait_a_while", "thanks"]


def test_the_order_tree_round_trips_nested_objects_and_lists() -> None:
    document = {"b": 1, "a": [{"z": 1, "y": 2}, 3], "c": {"q": {"k": 1, "j": 2}, "p": None}}
    shuffled = {"a": [{"y": 2, "z": 1}, 3], "c": {"p": None, "q": {"j": 2, "k": 1}}, "b": 1}
    back = restore(shuffled, capture(document))
    assert back == document
    assert list(back) == ["b", "a", "c"] and list(back["a"][0]) == ["z", "y"]
    assert list(back["c"]) == ["q", "p"] and list(back["c"]["q"]) == ["k", "j"]
    # A step not reached from start comes last; a branch's exits are walked in order.
    walked = journey_order(
        {
            "start": "a",
            "steps": {
                "x": {"type": "exit"},
                "c": {"type": "exit"},
                "b": {"type": "exit"},
                "a": {"type": "branch", "rules": [{"next": "b"}], "default": "c"},
            },
        }
    )
    assert list(walked["steps"]) == ["a", "b", "c", "x"]


def _v1() -> dict[str, Any]:
    definition = example("hubspot-nurture-goal")
    definition["key"] = "nurture"
    return definition


def _v2() -> dict[str, Any]:
    definition = copy.deepcopy(_v1())
    definition["name"] = "Lead nurturing, second edition"
    definition["trigger"] = {"type": "event", "name": "signed_up"}
    definition["entry"] = {"reentry": "after_exit"}
    definition["goal"]["criteria"] = {
        "type": "field",
        "field": "lifecycle_stage",
        "op": "eq",
        "value": "customer",
    }
    definition["steps"]["wait_2d"]["duration"] = "3d"
    definition["steps"]["offer"]["template"] = "nurture-offer-2"
    del definition["steps"]["case_study"]
    definition["steps"]["wait_2d"]["next"] = "wait_3d"
    definition["steps"]["offer"]["next"] = "last_call"
    definition["steps"]["last_call"] = {"type": "send_email", "template": "nurture-offer"}
    return definition


async def _templates(api: httpx.AsyncClient, *keys: str) -> None:
    for key in keys:
        ok(await api.put(f"/v1/templates/email/{key}", json={"subject": key, "text": "Hi"}))


async def test_the_diff_of_two_versions_names_each_change(api: httpx.AsyncClient) -> None:
    await _templates(api, "nurture-intro", "nurture-case-study", "nurture-offer", "nurture-offer-2")
    ok(await api.post("/v1/journeys", json=_v1()), 201)
    ok(await api.post("/v1/journeys/nurture/publish"), 201)
    ok(await api.put("/v1/journeys/nurture/draft", json=_v2()))

    pending = ok(await api.get("/v1/journeys/nurture/versions/live/diff/draft"))
    ok(await api.post("/v1/journeys/nurture/publish"), 201)
    body = ok(await api.get("/v1/journeys/nurture/versions/1/diff/2"))

    assert (body["from"], body["to"]) == ("1", "2")
    assert pending["summary"] == body["summary"]  # the draft became version 2 as it was
    summary = body["summary"]
    expected = [
        "name changed from 'Lead nurturing until the lead becomes a customer' to "
        "'Lead nurturing, second edition'",
        "trigger changed from enrolment through the API to event 'signed_up'",
        "entry rule re-entry changed from 'never' to 'after_exit'",
        "goal changed from 'became a customer': (field lifecycle_stage eq 'customer' or event "
        "'purchase') to 'became a customer': field lifecycle_stage eq 'customer'",
        "step 'wait_2d' changed: duration '2d' -> '3d'; next 'case_study' -> 'wait_3d'",
        "step 'offer' changed: template 'nurture-offer' -> 'nurture-offer-2'; next none -> "
        "'last_call'",
        "step 'last_call' added: send email 'nurture-offer'",
        "step 'case_study' removed (was: send email 'nurture-case-study', then 'wait_3d')",
    ]
    assert summary == expected, summary
    by_path = {change["path"]: change for change in body["changes"]}
    assert by_path["steps.wait_2d"]["fields"][0] == {
        "field": "duration",
        "before": "2d",
        "after": "3d",
    }
    assert by_path["steps.last_call"]["kind"] == "added"
    assert by_path["steps.case_study"]["kind"] == "removed"
    assert by_path["trigger"]["after"] == {"type": "event", "name": "signed_up", "where": {}}

    same = ok(await api.get("/v1/journeys/nurture/versions/2/diff/draft"))
    assert same["changes"] == [] and same["summary"] == []
    backwards = ok(await api.get("/v1/journeys/nurture/versions/2/diff/1"))
    assert "step 'case_study' added" in " ".join(backwards["summary"])
    assert (await api.get("/v1/journeys/nurture/versions/7/diff/1")).status_code == 404
    assert (await api.get("/v1/journeys/nurture/versions/one/diff/1")).status_code == 422
    assert (await api.get("/v1/journeys/none/versions/1/diff/2")).status_code == 404


def test_a_rough_draft_is_compared_as_written() -> None:
    changes = diff({"key": "x", "name": "x", "steps": {"a": {"type": "wait"}}}, {"key": "x"})
    assert [c.summary for c in changes] == [
        "name removed (was 'x')",
        "step 'a' removed (was: wait)",
    ]


# With a worker: publishing starts the audience runs of list and segment starters, which must
# finish (an abandoned run would stall the time-skipping server for later tests).
@pytest.mark.usefixtures("worker")
async def test_every_starter_publishes_with_its_own_templates(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    listed = ok(await api.get("/v1/starters"))["items"]
    keys = {item["key"] for item in listed}
    assert keys == {
        "quickstart",
        "benchmark-welcome",
        "dynamics-launch",
        "hubspot-nurture-goal",
        "register-coupon",
        "find-active-users",
        "find-preferences",
        "repeat-purchase",
        "win-back",
        "abandoned-cart",
        "member-180-days",
    }
    for item in listed:
        key = f"my-{item['key']}"
        created = ok(
            await api.post(
                "/v1/journeys",
                params={"starter": item["key"]},
                json={"key": key, "name": f"My {item['name']}", "owner": "ann@example.com"},
            ),
            201,
        )
        assert created["status"] == "draft" and created["owner"] == "ann@example.com"
        assert created["tags"] == item["tags"] and created["description"]
        assert sorted(created["created"]["templates_created"]) == sorted(
            f"{t.split('/')[0]}/{key}-{t.split('/')[1]}" for t in item["templates"]
        )
        version = ok(await api.post(f"/v1/journeys/{key}/publish"), 201)
        sends = [s for s in version["definition"]["steps"].values() if "template" in s]
        assert sends and all(s["template"].startswith(f"{key}-") for s in sends)

    # The seed starters are the seed journeys of examples/journeys, step for step.
    for name in ("quickstart", "benchmark-welcome", "dynamics-launch", "hubspot-nurture-goal"):
        assert starters()[name].journey == example(name), name
    assert starters()["register-coupon"].journey == example("register-coupon")
    # The 180-day journey spans 180 days of waits.
    member: dict[str, Any] = dict(starters()["member-180-days"].journey)
    waits = [s["duration"] for s in member["steps"].values() if s["type"] == "wait"]
    assert sum(int(d.rstrip("d")) for d in waits) == 180

    again = await api.post(
        "/v1/journeys", params={"starter": "win-back"}, json={"key": "my-win-back", "name": "x"}
    )
    assert again.status_code == 409
    missing = await api.post(
        "/v1/journeys", params={"starter": "nope"}, json={"key": "z", "name": "z"}
    )
    assert missing.status_code == 404
    one = ok(await api.get("/v1/starters/find-preferences"))
    links = " ".join(t["html"] for t in one["template_contents"])
    assert 'data-link="women"' in links and 'data-link="men"' in links


async def test_a_clone_copies_the_flow_and_its_templates_and_is_listed_by_owner_and_tag(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(
        await api.post(
            "/v1/journeys",
            params={"starter": "abandoned-cart"},
            json={
                "key": "cart",
                "name": "Cart",
                "owner": "ann@example.com",
                "tags": ["shop", "cart"],
            },
        ),
        201,
    )
    ok(await api.post("/v1/journeys/cart/publish"), 201)
    ok(
        await api.put(
            "/v1/templates/email/cart-cart-reminder", json={"subject": "Edited", "text": "x"}
        )
    )

    cloned = ok(
        await api.post(
            "/v1/journeys/cart/clone",
            json={"key": "cart-eu", "name": "Cart (EU)", "version": 1, "owner": "bob@example.com"},
        ),
        201,
    )
    assert cloned["status"] == "draft" and cloned["tags"] == ["shop", "cart"]
    assert "email/cart-eu-cart-reminder" in cloned["created"]["templates_created"]
    steps = cloned["draft"]["steps"]
    assert steps["reminder"]["template"] == "cart-eu-cart-reminder"
    assert list(steps) == list(
        ok(await api.get("/v1/journeys/cart"))["live"]["definition"]["steps"]
    )
    async with sessions() as session:
        copied = await session.scalar(
            select(Template).where(col(Template.key) == "cart-eu-cart-reminder")
        )
    assert copied is not None and copied.subject == "Edited"  # the current content
    ok(await api.post("/v1/journeys/cart-eu/publish"), 201)

    shared = ok(
        await api.post("/v1/journeys/cart/clone", json={"key": "cart-us", "copy_templates": False}),
        201,
    )
    assert shared["draft"]["steps"]["reminder"]["template"] == "cart-cart-reminder"
    assert shared["created"]["templates_created"] == []

    def keys(page: dict[str, Any]) -> list[str]:
        return [item["key"] for item in page["items"]]

    assert keys(ok(await api.get("/v1/journeys", params={"owner": "ANN@example.com"}))) == [
        "cart",
        "cart-us",
    ]
    assert keys(ok(await api.get("/v1/journeys", params={"owner": "bob@example.com"}))) == [
        "cart-eu"
    ]
    assert keys(ok(await api.get("/v1/journeys", params={"tag": "shop"}))) == [
        "cart",
        "cart-eu",
        "cart-us",
    ]
    assert keys(ok(await api.get("/v1/journeys", params=[("tag", "shop"), ("tag", "cart")]))) == [
        "cart",
        "cart-eu",
        "cart-us",
    ]
    assert keys(ok(await api.get("/v1/journeys", params={"tag": "other"}))) == []
    assert (await api.post("/v1/journeys/cart/clone", json={"key": "cart-eu"})).status_code == 409
    assert (await api.post("/v1/journeys/gone/clone", json={"key": "x"})).status_code == 404
    assert (
        await api.post("/v1/journeys/cart/clone", json={"key": "y", "version": 9})
    ).status_code == 404
    bad_owner = await api.post(
        "/v1/journeys/cart/clone", json={"key": "z", "owner": "not-an-email"}
    )
    assert bad_owner.status_code == 422
    async with sessions() as session:
        versions = list(await session.scalars(select(JourneyVersion)))
    assert len(versions) == 2
