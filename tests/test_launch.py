"""Launching a journey safely (docs/launching.md): test contacts only, a canary rollout and
widening it, on real Postgres and the time-skipping Temporal server with the real worker."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlmodel import col

from nurture.audience.segments.service import put_segment
from nurture.db.engine import SessionFactory
from nurture.db.models import BulkEnrollment, OutboxMessage, TimelineNote
from nurture.journeys import rollout
from tests.support import (
    all_enrollments_ended,
    enrolled_in,
    exits_at_once,
    make_contact,
    make_lists,
    ok,
    publish_journey,
)

IDS = [uuid.uuid5(uuid.NAMESPACE_URL, f"nurture-test-contact-{n}") for n in range(1_000)]


def test_a_20_percent_canary_admits_about_a_fifth_of_1000_contacts_and_is_stable() -> None:
    admitted = [c for c in IDS if rollout.in_rollout("win-back", c, 20)]
    # Binomial(1000, 0.2): a standard deviation of about 13; the hash is fixed, so is this.
    assert 170 <= len(admitted) <= 230, len(admitted)
    assert admitted == [c for c in IDS if rollout.in_rollout("win-back", c, 20)]
    # Widening keeps everyone already in; 0 % and 100 % are nobody and everybody.
    wider = {c for c in IDS if rollout.in_rollout("win-back", c, 50)}
    assert set(admitted) < wider and 450 <= len(wider) <= 550
    assert not any(rollout.in_rollout("win-back", c, 0) for c in IDS)
    assert all(rollout.in_rollout("win-back", c, 100) for c in IDS)
    # Per journey: another journey's canary is another fifth.
    other = {c for c in IDS if rollout.in_rollout("abandoned-cart", c, 20)}
    assert other != set(admitted) and 170 <= len(other) <= 230


async def test_the_sql_bucket_is_the_python_bucket(sessions: SessionFactory) -> None:
    async with sessions() as session:
        rows = await session.execute(
            select(text("ids.id"), rollout.bucket_sql("win-back", text("ids.id"))).select_from(
                text("unnest(CAST(:ids AS uuid[])) AS ids(id)")
            ),
            {"ids": [str(c) for c in IDS]},
        )
        in_sql = {uuid.UUID(str(c)): bucket for c, bucket in rows}
    assert in_sql == {c: rollout.bucket("win-back", c) for c in IDS}


async def _wait_bulk(sessions: SessionFactory, workflow_id: str, within: float = 120) -> Any:
    async with asyncio.timeout(within):
        while True:
            async with sessions() as session:
                bulk = await session.scalar(
                    select(BulkEnrollment).where(col(BulkEnrollment.workflow_id) == workflow_id)
                )
            if bulk is not None and bulk.status == "completed":
                return bulk
            await asyncio.sleep(0.2)


@pytest.mark.usefixtures("worker")
async def test_a_canary_holds_back_a_segment_and_widening_admits_the_rest(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await put_segment(sessions, "sleepers", "Sleepers", {"type": "tag", "tag": "zz", "op": "has"})
    contacts = [await make_contact(sessions, external_id=f"s{n}", tags=["zz"]) for n in range(40)]
    await make_contact(sessions, external_id="tester", tags=["zz"], is_test=True)
    inside = {c for c in contacts if rollout.in_rollout("sleepy", c, 20)}
    assert 0 < len(inside) < 40  # the ids are random: a canary that shows something
    trigger = {"type": "segment", "segment": "sleepers", "mode": "once"}
    ok(await api.post("/v1/journeys", json=exits_at_once("sleepy", trigger)), 201)
    # Set before publishing: the journey goes live as a canary from its first run.
    state = ok(await api.put("/v1/journeys/sleepy/launch", json={"rollout_percent": 20}))
    assert (state["rollout_percent"], state["readmit_run"]) == (20.0, None)  # not live yet
    ok(await api.post("/v1/journeys/sleepy/publish"), 201)
    await _wait_bulk(sessions, "audience:sleepy:once")
    await all_enrollments_ended(sessions, within=60)

    entered = set(await enrolled_in(sessions, "sleepy"))
    assert entered == {f"s{contacts.index(c)}" for c in inside} | {"tester"}
    counts = ok(await api.get("/v1/journeys/sleepy/launch"))["counts"]
    assert counts == {
        "entered": len(inside),
        "test_contacts_entered": 1,
        "held_back": 40 - len(inside),
        "held_back_notes": 40 - len(inside),
        "kept_out_test_only": 0,
    }
    outside = next(c for c in contacts if c not in inside)
    timeline = ok(await api.get(f"/v1/contacts/id:{outside}/timeline"))
    words = [entry["summary"] for entry in timeline["items"]]
    assert any("held back by its 20% rollout" in w for w in words), words

    widened = ok(await api.put("/v1/journeys/sleepy/launch", json={"rollout_percent": 100}))
    assert widened["readmit_run"] and widened["readmit_run"].startswith("audience:sleepy:readmit:")
    bulk = await _wait_bulk(sessions, widened["readmit_run"])
    await all_enrollments_ended(sessions, within=60)

    assert bulk.enrolled == 40 - len(inside)  # only those held back: nobody asked twice
    after = await enrolled_in(sessions, "sleepy")
    assert sorted(after) == sorted([f"s{n}" for n in range(40)] + ["tester"])  # each once
    counts = ok(await api.get("/v1/journeys/sleepy/launch"))["counts"]
    assert (counts["entered"], counts["held_back"]) == (40, 0)
    async with sessions() as session:
        already = await session.scalar(
            select(text("count(*)"))
            .select_from(TimelineNote)
            .where(col(TimelineNote.reason) == "already_enrolled")
        )
    assert already == 0  # the re-admitting run asked only those kept out


@pytest.mark.usefixtures("worker")
async def test_a_triggered_journey_admits_the_newly_included_from_their_next_trigger(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.post("/v1/journeys", json=exits_at_once("api-canary", {"type": "api"})), 201)
    ok(await api.post("/v1/journeys/api-canary/publish"), 201)
    state = ok(await api.put("/v1/journeys/api-canary/launch", json={"rollout_percent": 0}))
    assert state["readmit_run"] is None  # an API journey has no audience to re-admit
    await make_contact(sessions, external_id="later")

    refused = await api.post(
        "/v1/enrollments", json={"journey_key": "api-canary", "external_id": "later"}
    )
    assert refused.status_code == 409, refused.text
    assert "held back" in refused.json()["detail"]
    assert ok(await api.get("/v1/journeys/api-canary/launch"))["counts"]["held_back"] == 1

    ok(await api.put("/v1/journeys/api-canary/launch", json={"rollout_percent": 100}))
    ok(
        await api.post(
            "/v1/enrollments", json={"journey_key": "api-canary", "external_id": "later"}
        ),
        201,
    )
    await all_enrollments_ended(sessions)
    counts = ok(await api.get("/v1/journeys/api-canary/launch"))["counts"]
    assert (counts["entered"], counts["held_back"], counts["held_back_notes"]) == (1, 0, 1)


def _with_goal(key: str) -> dict[str, Any]:
    return {
        "key": key,
        "name": "Try me first",
        "trigger": {"type": "api"},
        "goal": {"criteria": {"type": "tag", "tag": "bought"}},
        "start": "hello",
        "steps": {
            "hello": {"type": "send_email", "template": "hello", "next": "mark"},
            "mark": {"type": "update_contact", "add_tags": ["bought"]},
        },
    }


@pytest.mark.usefixtures("worker")
async def test_test_contacts_only_runs_for_real_and_stays_out_of_conversion(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/templates/email/hello", json={"subject": "Hello", "text": "Hi"}))
    ok(await api.post("/v1/journeys", json=_with_goal("try-me")), 201)
    ok(await api.put("/v1/journeys/try-me/launch", json={"audience": "test_only"}))
    ok(await api.post("/v1/journeys/try-me/publish"), 201)
    tester = ok(
        await api.put("/v1/contacts/qa-1", json={"email": "qa@example.com", "test": True}), 201
    )
    assert tester["test"] is True
    ok(await api.put("/v1/contacts/real-1", json={"email": "real@example.com"}), 201)

    ok(
        await api.post("/v1/enrollments", json={"journey_key": "try-me", "external_id": "qa-1"}),
        201,
    )
    refused = await api.post(
        "/v1/enrollments", json={"journey_key": "try-me", "external_id": "real-1"}
    )
    assert refused.status_code == 409, refused.text
    assert "test contacts only" in refused.json()["detail"]
    await all_enrollments_ended(sessions)

    async with sessions() as session:  # a real send, through the configured channel
        sent_to = list(await session.scalars(select(col(OutboxMessage.to_address))))
    assert sent_to == ["qa@example.com"]
    goal = ok(await api.get("/v1/journeys/try-me/goal"))
    assert (goal["enrolled"], goal["converted"]) == (0, 0)  # the tester converted, unseen
    words = [e["summary"] for e in ok(await api.get("/v1/contacts/real-1/timeline"))["items"]]
    assert any("open to test contacts only" in w for w in words), words
    words = [e["summary"] for e in ok(await api.get("/v1/contacts/qa-1/timeline"))["items"]]
    assert any("marked as a test contact" in w.lower() for w in words), words

    opened = ok(await api.put("/v1/journeys/try-me/launch", json={"audience": "everyone"}))
    assert opened["counts"]["kept_out_test_only"] == 1
    ok(
        await api.post("/v1/enrollments", json={"journey_key": "try-me", "external_id": "real-1"}),
        201,
    )
    await all_enrollments_ended(sessions)
    goal = ok(await api.get("/v1/journeys/try-me/goal"))
    assert (goal["enrolled"], goal["converted"]) == (1, 1)
    counts = ok(await api.get("/v1/journeys/try-me/launch"))["counts"]
    assert counts == {
        "entered": 1,
        "test_contacts_entered": 1,
        "held_back": 0,
        "held_back_notes": 0,
        "kept_out_test_only": 0,
    }
    unmarked = ok(await api.patch("/v1/contacts/qa-1", json={"test": False}))
    assert unmarked["test"] is False
    assert ok(await api.patch("/v1/contacts/qa-1", json={"fields": {"a": 1}}))["test"] is False


async def test_launch_settings_are_checked(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await publish_journey(sessions, exits_at_once("checked", {"type": "api"}))
    bad = await api.put("/v1/journeys/checked/launch", json={"rollout_percent": 120})
    assert bad.status_code == 422 and "rollout_percent" in bad.text
    bad = await api.put("/v1/journeys/checked/launch", json={"audience": "friends"})
    assert bad.status_code == 422 and "audience" in bad.text
    assert (
        await api.put("/v1/journeys/nope/launch", json={"rollout_percent": 5})
    ).status_code == 404
    ok(await api.post("/v1/journeys/checked/archive"))
    archived = await api.put("/v1/journeys/checked/launch", json={"rollout_percent": 5})
    assert archived.status_code == 409


@pytest.mark.usefixtures("worker")
async def test_a_journey_started_by_entering_a_segment_readmits_the_held_back_still_in_it(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(
        await api.put(
            "/v1/segments/vips",
            json={"name": "VIPs", "filter": {"type": "tag", "tag": "vip", "op": "has"}},
        ),
        201,
    )
    entered = exits_at_once("vip-hello", {"type": "segment_entered", "segment": "vips"})
    ok(await api.post("/v1/journeys", json=entered), 201)
    ok(await api.put("/v1/journeys/vip-hello/launch", json={"rollout_percent": 0}))
    ok(await api.post("/v1/journeys/vip-hello/publish"), 201)
    for n in range(3):  # they enter the segment, and are held back
        ok(await api.put(f"/v1/contacts/vip-{n}", json={"tags": ["vip"]}), 201)
    ok(await api.put("/v1/contacts/vip-2", json={"tags": []}))  # and one leaves it again
    assert ok(await api.get("/v1/journeys/vip-hello/launch"))["counts"]["held_back"] == 3

    widened = ok(await api.put("/v1/journeys/vip-hello/launch", json={"rollout_percent": 100}))
    await _wait_bulk(sessions, widened["readmit_run"])
    await all_enrollments_ended(sessions)

    # Those still in the segment enter; the one who left it does not.
    assert sorted(await enrolled_in(sessions, "vip-hello")) == ["vip-0", "vip-1"]
    counts = ok(await api.get("/v1/journeys/vip-hello/launch"))["counts"]
    assert (counts["entered"], counts["held_back"]) == (2, 1)


@pytest.mark.usefixtures("worker")
async def test_opening_a_test_only_segment_journey_admits_its_audience(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await put_segment(sessions, "beta", "Beta", {"type": "tag", "tag": "beta", "op": "has"})
    for n in range(3):
        await make_contact(sessions, external_id=f"b{n}", tags=["beta"])
    await make_contact(sessions, external_id="qa", tags=["beta"], is_test=True)
    trigger = {"type": "segment", "segment": "beta", "mode": "once"}
    ok(await api.post("/v1/journeys", json=exits_at_once("beta-run", trigger)), 201)
    ok(await api.put("/v1/journeys/beta-run/launch", json={"audience": "test_only"}))
    ok(await api.post("/v1/journeys/beta-run/publish"), 201)
    await _wait_bulk(sessions, "audience:beta-run:once")
    await all_enrollments_ended(sessions)
    assert await enrolled_in(sessions, "beta-run") == ["qa"]
    assert ok(await api.get("/v1/journeys/beta-run/launch"))["counts"]["kept_out_test_only"] == 3

    opened = ok(await api.put("/v1/journeys/beta-run/launch", json={"audience": "everyone"}))
    await _wait_bulk(sessions, opened["readmit_run"])
    await all_enrollments_ended(sessions)
    assert sorted(await enrolled_in(sessions, "beta-run")) == ["b0", "b1", "b2", "qa"]
    counts = ok(await api.get("/v1/journeys/beta-run/launch"))["counts"]
    assert (counts["entered"], counts["kept_out_test_only"]) == (3, 0)


@pytest.mark.usefixtures("worker")
async def test_a_list_members_journey_readmits_the_members_it_held_back(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await make_lists(sessions, "club")
    members = [str(await make_contact(sessions, external_id=f"m{n}")) for n in range(4)]
    ok(await api.post("/v1/lists/club/members", json={"contact_ids": members}))
    trigger = {"type": "list_joined", "list": "club", "only_new": False}
    ok(await api.post("/v1/journeys", json=exits_at_once("club-hello", trigger)), 201)
    ok(await api.put("/v1/journeys/club-hello/launch", json={"rollout_percent": 0}))
    ok(await api.post("/v1/journeys/club-hello/publish"), 201)
    await _wait_bulk(sessions, "audience:club-hello:members")
    assert await enrolled_in(sessions, "club-hello") == []

    widened = ok(await api.put("/v1/journeys/club-hello/launch", json={"rollout_percent": 100}))
    await _wait_bulk(sessions, widened["readmit_run"])
    await all_enrollments_ended(sessions)
    assert sorted(await enrolled_in(sessions, "club-hello")) == ["m0", "m1", "m2", "m3"]
