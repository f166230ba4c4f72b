"""Entering a segment is a change from out to in (`nurture.audience.segments.membership`): contacts
already in when a journey starts have not entered; leaving and coming back is a new entry;
time passing, opens and clicks, and sweeps find entries no API change announces; an entry
cut short by a crash is finished by the next sweep without enrolling anyone twice."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment

from activities.segments import SegmentActivities
from nurture.audience.segments.membership import observe, sweep, unadmitted
from nurture.audience.segments.sweeps import request_sweep, start_segment_watch
from nurture.contracts import SEGMENT_WATCH_ID, SweepResult
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, Message, SegmentMember, utcnow
from nurture.journeys.enrollments import EnrollmentOptions
from nurture.journeys.triggers import admit
from tests.support import (
    all_enrollments_ended,
    enrolled_in,
    exits_at_once,
    make_contact,
    ok,
    publish_journey,
)

pytestmark = pytest.mark.usefixtures("worker")

VIPS: dict[str, Any] = {"name": "VIPs", "filter": {"type": "tag", "tag": "vip", "op": "has"}}
# Logged in once, but not in the last 3 days: only time passing brings a contact in.
LAPSED = {
    "name": "Lapsed",
    "filter": {
        "type": "all",
        "conditions": [
            {"type": "event", "name": "login"},
            {"type": "event", "name": "login", "max_count": 0, "within_days": 3},
        ],
    },
}
CLICKERS = {"name": "Clickers", "filter": {"type": "clicked", "within_days": 30}}


def _welcome(key: str, segment: str, reentry: str = "never") -> dict[str, Any]:
    """A journey that starts on entering `segment` and ends at once."""
    return exits_at_once(
        key, {"type": "segment_entered", "segment": segment}, entry={"reentry": reentry}
    )


async def _contact_id(sessions: SessionFactory, external_id: str) -> uuid.UUID:
    async with sessions() as session:
        found = await session.scalar(
            select(col(Contact.id)).where(col(Contact.external_id) == external_id)
        )
    assert found is not None
    return found


async def test_members_from_before_the_journey_started_have_not_entered(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/segments/vips", json=VIPS), 201)
    ok(await api.put("/v1/contacts/old-vip", json={"tags": ["vip"]}), 201)
    await publish_journey(sessions, _welcome("vip-welcome", "vips"))

    ok(await api.put("/v1/contacts/old-vip", json={"tags": ["vip"], "fields": {"n": 1}}))
    ok(await api.put("/v1/contacts/new-vip", json={"tags": ["vip"]}), 201)
    ok(await api.put("/v1/contacts/not-vip", json={"tags": ["other"]}), 201)

    assert await enrolled_in(sessions, "vip-welcome") == ["new-vip"]


async def test_leaving_and_coming_back_is_a_new_entry_that_reentry_rules_judge(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/segments/vips", json=VIPS), 201)
    await publish_journey(sessions, _welcome("every-time", "vips", reentry="after_exit"))
    await publish_journey(sessions, _welcome("only-once", "vips", reentry="never"))

    ok(await api.put("/v1/contacts/ada", json={"tags": ["vip"]}), 201)  # enters
    await all_enrollments_ended(sessions)
    ok(await api.put("/v1/contacts/ada", json={"tags": ["vip"], "fields": {"n": 1}}))  # stays
    ok(await api.put("/v1/contacts/ada", json={"tags": []}))  # leaves
    ok(await api.put("/v1/contacts/ada", json={"tags": [], "fields": {"n": 2}}))  # stays out
    ok(await api.put("/v1/contacts/ada", json={"tags": ["vip"]}))  # comes back
    await all_enrollments_ended(sessions)

    assert await enrolled_in(sessions, "every-time") == ["ada", "ada"]
    assert await enrolled_in(sessions, "only-once") == ["ada"]


async def test_time_passing_brings_contacts_in_at_the_watchs_next_sweep(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, task_queue: str
) -> None:
    ok(await api.put("/v1/segments/lapsed", json=LAPSED), 201)
    await publish_journey(sessions, _welcome("win-back", "lapsed"))
    for external_id in ("sleeper", "regular"):
        ok(await api.put(f"/v1/contacts/{external_id}", json={"email": f"{external_id}@x.io"}), 201)
        login = {"external_id": external_id, "name": "login", "occurred_at": _ago(days=1)}
        ok(await api.post("/v1/events", json=login), 202)
    await start_segment_watch(client, task_queue)
    watch = client.get_workflow_handle(SEGMENT_WATCH_ID)
    first = await _next_sweep(watch, after=None)
    assert await enrolled_in(sessions, "win-back") == []  # both logged in yesterday

    # Three days pass for the sleeper (its login moves back; nothing about it is changed
    # through the API, so only a sweep can notice).
    async with sessions.begin() as session:
        await session.execute(
            text(
                "UPDATE events SET occurred_at = occurred_at - interval '3 days' "
                "WHERE contact_id = :id"
            ),
            {"id": await _contact_id(sessions, "sleeper")},
        )
        # ...and for the sweep: time moved, so the window moved over that login.
        await session.execute(
            text("UPDATE segment_sweeps SET swept_at = swept_at - interval '3 days'")
        )
    await request_sweep(client, task_queue)
    second = await _next_sweep(watch, after=first)

    assert (second.entered, second.enrolled) == (1, 1)
    assert await enrolled_in(sessions, "win-back") == ["sleeper"]


def _ago(days: int) -> str:
    return (utcnow() - timedelta(days=days)).isoformat()


async def _next_sweep(watch: Any, after: SweepResult | None) -> SweepResult:
    """The watch's first sweep after `after` (None: its first)."""
    previous = after.sweep if after is not None else 0
    async with asyncio.timeout(30):
        while True:
            try:
                last: SweepResult = await watch.query("last_sweep", result_type=SweepResult)
            except RPCError:  # its first task has not run yet
                last = SweepResult()
            if last.sweep > previous:
                return last
            await asyncio.sleep(0.05)


async def test_an_open_or_click_can_bring_a_contact_into_a_segment(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/segments/clickers", json=CLICKERS), 201)
    await publish_journey(sessions, _welcome("thanks-for-clicking", "clickers"))
    await publish_journey(
        sessions,
        {
            "key": "newsletter",
            "name": "newsletter",
            "start": "issue",
            "steps": {"issue": {"type": "send_email", "template": "issue"}},
        },
    )
    ok(await api.put("/v1/contacts/reader", json={"email": "reader@example.com"}), 201)
    reader = await _contact_id(sessions, "reader")
    ok(
        await api.post(
            "/v1/enrollments", json={"journey_key": "newsletter", "contact_id": str(reader)}
        ),
        201,
    )
    message_id = await _sent_message(sessions, reader)
    assert await enrolled_in(sessions, "thanks-for-clicking") == []

    click = {"kind": "click", "link": "shop"}
    ok(await api.post(f"/v1/messages/{message_id}/engagements", json=click), 202)

    assert await enrolled_in(sessions, "thanks-for-clicking") == ["reader"]


async def _sent_message(sessions: SessionFactory, contact_id: uuid.UUID) -> uuid.UUID:
    async with asyncio.timeout(30):
        while True:
            async with sessions() as session:
                found = await session.scalar(
                    select(col(Message.id)).where(
                        col(Message.contact_id) == contact_id, col(Message.status) == "sent"
                    )
                )
            if found is not None:
                return found
            await asyncio.sleep(0.05)


async def test_an_entry_cut_short_by_a_crash_is_finished_by_a_sweep_and_never_doubled(
    sessions: SessionFactory, client: Client, task_queue: str
) -> None:
    from nurture.audience.segments.service import put_segment

    await put_segment(sessions, "vips", "VIPs", VIPS["filter"])
    await publish_journey(sessions, _welcome("vip-welcome", "vips", reentry="always"))
    contact_id = await make_contact(sessions, external_id="ada", tags=["vip"])
    # The change was seen and the entry written, then the process died before enrolling.
    [entry] = await observe(sessions, contact_id)
    assert await enrolled_in(sessions, "vip-welcome") == []

    options = EnrollmentOptions(task_queue)
    activities = SegmentActivities(sessions, client, options)
    result = await ActivityEnvironment().run(activities.sweep_segments)
    await all_enrollments_ended(sessions)
    # A retry of the same entry (say the mark "admitted" was lost): the journey already has
    # this entry's enrollment, so even with re-entry "always" nobody is enrolled again.
    again = await admit(sessions, client, options, [entry])

    assert (result.admitted, result.enrolled) == (1, 1)
    assert again.enrollments == []
    assert await enrolled_in(sessions, "vip-welcome") == ["ada"]
    assert await unadmitted(sessions) == []


async def test_sweeps_follow_journeys_start_and_stop_watching_and_edited_filters(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/segments/vips", json=VIPS), 201)
    await make_contact(sessions, external_id="a", tags=["vip"])
    await make_contact(sessions, external_id="b", tags=["gold"])
    assert (await sweep(sessions)).segments == 0  # no journey starts on it: not watched
    await publish_journey(sessions, _welcome("vip-welcome", "vips"))
    assert await _members(sessions) == ["a"]  # the snapshot taken when it was published

    gold = {"name": "VIPs", "filter": {"type": "tag", "tag": "gold", "op": "has"}}
    ok(await api.put("/v1/segments/vips", json=gold))
    edited = await sweep(sessions)
    assert (edited.entered, edited.left) == (1, 1)
    assert await _members(sessions) == ["b"]

    ok(await api.post("/v1/journeys/vip-welcome/archive"))
    await sweep(sessions)
    assert await _members(sessions) == []  # nobody starts on it any more: watching stops


async def _members(sessions: SessionFactory) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(col(Contact.external_id)).join(
                SegmentMember, col(SegmentMember.contact_id) == col(Contact.id)
            )
        )
        return sorted(str(external_id) for external_id in rows)


async def test_leaving_a_list_can_enter_a_segment(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    not_customers = {"type": "not", "condition": {"type": "in_list", "list": "customers"}}
    ok(await api.post("/v1/lists", json={"key": "customers", "name": "Customers"}), 201)
    ok(await api.put("/v1/segments/lapsed", json={"name": "Lapsed", "filter": not_customers}), 201)
    ok(await api.put("/v1/contacts/ada", json={"email": "ada@example.com"}), 201)
    ada = await _contact_id(sessions, "ada")
    ok(await api.post("/v1/lists/customers/members", json={"contact_ids": [str(ada)]}))
    await publish_journey(sessions, _welcome("win-back", "lapsed"))

    removed = await api.delete(f"/v1/lists/customers/members/{ada}")

    assert removed.status_code == 204
    assert await enrolled_in(sessions, "win-back") == ["ada"]
