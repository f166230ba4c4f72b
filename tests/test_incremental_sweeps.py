"""Incremental segment sweeps (`nurture.audience.segments.incremental`): after a full sweep, a
sweep re-checks only the contacts changed since (through the change path) and those a time
window moved in or out; an edited filter, a filter over enrollments and the daily safety net
sweep in full. A sweep over 1,000,000 contacts is measured by `python -m bench.sweep`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import col, select

from nurture.audience.segments.membership import sweep
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, SegmentMember, utcnow
from tests.support import exits_at_once, ok, publish_journey

# The journeys these segments start run on a worker, and end before the next test: left
# waiting for one, they would stall the time-skipping server for the tests after.
pytestmark = pytest.mark.usefixtures("worker")

VIPS: dict[str, Any] = {"name": "VIPs", "filter": {"type": "tag", "tag": "vip", "op": "has"}}
NO_LOGIN_IN_3_DAYS: dict[str, Any] = {
    "name": "Lapsed",
    "filter": {"type": "event", "name": "login", "max_count": 0, "within_days": 3},
}


def _watching(key: str, segment: str) -> dict[str, Any]:
    return exits_at_once(key, {"type": "segment_entered", "segment": segment})


async def members(sessions: SessionFactory) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(col(Contact.external_id)).join(
                SegmentMember, col(SegmentMember.contact_id) == col(Contact.id)
            )
        )
        return sorted(str(external_id) for external_id in rows)


async def shift(sessions: SessionFactory, sql: str) -> None:
    async with sessions.begin() as session:
        await session.execute(text(sql))


async def test_a_sweep_rechecks_the_contacts_changed_through_the_change_path_only(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/segments/vips", json=VIPS), 201)
    await publish_journey(sessions, _watching("vip-welcome", "vips"))
    for name in ("ada", "bob", "cy"):
        ok(await api.put(f"/v1/contacts/{name}", json={"tags": ["regular"]}), 201)
    first = await sweep(sessions)
    assert (first.segments, first.full) == (1, 1)  # never swept: in full

    # bob becomes a VIP through the API (a recorded change); cy behind its back.
    ok(await api.put("/v1/contacts/bob", json={"tags": ["vip"]}))
    await shift(sessions, "UPDATE contacts SET tags = '{vip}' WHERE external_id = 'cy'")
    await shift(sessions, "DELETE FROM segment_members")  # leave the entries to the sweep
    # The contacts' creation is old news: only bob's change is recent.
    await shift(
        sessions,
        "UPDATE contact_changes SET at = at - interval '1 day' WHERE contact_id IN "
        "(SELECT id FROM contacts WHERE external_id <> 'bob')",
    )
    second = await sweep(sessions)

    assert (second.full, second.entered) == (0, 1)
    assert await members(sessions) == ["bob"]  # cy's change is not a change it can see

    # The daily full sweep is the safety net for writes behind the change path.
    await shift(
        sessions, "UPDATE segment_sweeps SET full_swept_at = full_swept_at - interval '25 hours'"
    )
    third = await sweep(sessions)
    assert (third.full, third.entered) == (1, 1)
    assert await members(sessions) == ["bob", "cy"]


async def test_time_moving_a_window_rechecks_the_contacts_at_its_edge(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/segments/lapsed", json=NO_LOGIN_IN_3_DAYS), 201)
    logins = {
        "long-gone": timedelta(days=5),  # lapsed before, still lapsed
        "edge": timedelta(days=3) - timedelta(minutes=30),  # crosses 3 days within the hour
        "recent": timedelta(days=2),  # still within 3 days an hour later
    }
    for name, ago in logins.items():
        ok(await api.put(f"/v1/contacts/{name}", json={"email": f"{name}@x.io"}), 201)
        login = {"external_id": name, "name": "login", "occurred_at": (utcnow() - ago).isoformat()}
        ok(await api.post("/v1/events", json=login), 202)
    await publish_journey(sessions, _watching("win-back", "lapsed"))
    assert await members(sessions) == ["long-gone"]
    assert (await sweep(sessions)).full == 1

    # An hour passes: every recorded time moves an hour back; the contacts' changes are made
    # older still, so that no contact counts as changed since the sweep and only the window's
    # movement can bring "edge" in.
    for table, column, by in (
        ("events", "occurred_at", "1 hour"),
        ("events", "received_at", "1 day"),
        ("contact_changes", "at", "1 day"),
        ("segment_sweeps", "swept_at", "1 hour"),
        ("segment_sweeps", "full_swept_at", "1 hour"),
    ):
        await shift(sessions, f"UPDATE {table} SET {column} = {column} - interval '{by}'")
    moved = await sweep(sessions)

    assert (moved.full, moved.entered, moved.left) == (0, 1, 0)
    assert await members(sessions) == ["edge", "long-gone"]

    # "edge" logs in again, through the API (a recorded change): it is out at once (the
    # change is observed) and the next incremental sweep agrees.
    again = {"external_id": "edge", "name": "login", "occurred_at": utcnow().isoformat()}
    ok(await api.post("/v1/events", json=again), 202)
    assert (await sweep(sessions)).full == 0
    assert await members(sessions) == ["long-gone"]


async def test_an_edited_filter_and_a_filter_over_enrollments_are_swept_in_full(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/segments/vips", json=VIPS), 201)
    await publish_journey(sessions, _watching("vip-welcome", "vips"))
    assert (await sweep(sessions)).full == 1
    assert (await sweep(sessions)).full == 0
    gold = {"name": "VIPs", "filter": {"type": "tag", "tag": "gold", "op": "has"}}
    ok(await api.put("/v1/segments/vips", json=gold))
    assert (await sweep(sessions)).full == 1  # edited
    enrolled = {
        "name": "VIPs",
        "filter": {"type": "enrolled_in", "journey": "vip-welcome", "within_days": 7},
    }
    ok(await api.put("/v1/segments/vips", json=enrolled))
    assert (await sweep(sessions)).full == 1
    assert (await sweep(sessions)).full == 1  # enrollments are not contact changes: always
