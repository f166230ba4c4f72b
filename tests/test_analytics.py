"""Journey analytics over real enrollments: step counts, the send funnel, the daily series."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, text
from sqlmodel import col
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from nurture.audience.events import record_engagement
from nurture.audience.suppressions import suppress
from nurture.contracts import EnrollmentResult
from nurture.db.engine import SessionFactory
from nurture.db.models import Enrollment, Message, SuppressionReason, WebhookEvent, utcnow
from tests.support import example, make_contact, ok, publish_journey, reach_step


async def _enroll(
    api: httpx.AsyncClient, client: Client, contact_id: uuid.UUID
) -> WorkflowHandle[Any, EnrollmentResult]:
    created = ok(
        await api.post(
            "/v1/enrollments", json={"journey_key": "quickstart", "contact_id": str(contact_id)}
        ),
        201,
    )
    handle = client.get_workflow_handle(created["workflow_id"], result_type=EnrollmentResult)
    await reach_step(handle, "clicked_shop")
    return handle


async def _message_of(sessions: SessionFactory, contact_id: uuid.UUID) -> uuid.UUID:
    async with sessions() as session:
        message_id = await session.scalar(
            select(col(Message.id)).where(col(Message.contact_id) == contact_id)
        )
    assert message_id is not None
    return message_id


async def test_steps_and_send_funnel_count_what_happened(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    worker: None,
) -> None:
    await publish_journey(sessions, example("quickstart"))
    clicker_id, opener_id, complainer_id = [await make_contact(sessions) for _ in range(3)]
    no_address = await make_contact(sessions, email=None)
    handles = {}
    for contact in (clicker_id, opener_id, complainer_id, no_address):
        handles[contact] = await _enroll(api, client, contact)

    # A person clicks the shop link: the journey moves on to its end.
    clicked = await _message_of(sessions, clicker_id)
    ok(
        await api.post(
            f"/v1/messages/{clicked}/engagements", json={"kind": "click", "link": "shop"}
        ),
        202,
    )
    # Polled, not `finish`ed: letting the test server skip time would time the others out.
    async with asyncio.timeout(15):
        while True:
            if (await handles[clicker_id].describe()).status == WorkflowExecutionStatus.COMPLETED:
                break
            await asyncio.sleep(0.05)
    # A mail proxy fetches the pixel, then the person opens it: one opened message.
    opened = await _message_of(sessions, opener_id)
    await record_engagement(sessions, client, opened, "open", machine=True)
    ok(await api.post(f"/v1/messages/{opened}/engagements", json={"kind": "open"}), 202)
    # A delivery report for one, a complaint and an unsubscribe for another.
    complained = await _message_of(sessions, complainer_id)
    async with sessions.begin() as session:
        for message_id, kind in ((opened, "delivered"), (complained, "complained")):
            session.add(
                WebhookEvent(
                    provider="sendgrid",
                    dedupe_key=f"t:{uuid.uuid4()}",
                    kind=kind,
                    message_id=message_id,
                    payload={"permanent": False},
                )
            )
        await suppress(
            session,
            complainer_id,
            "email",
            SuppressionReason.UNSUBSCRIBED,
            source="unsubscribe_link",
            message_id=complained,
        )

    body = ok(await api.get("/v1/journeys/quickstart/analytics"))
    steps = {step["step_id"]: step for step in body["steps"]}
    assert [step["step_id"] for step in body["steps"]] == [
        "welcome",
        "clicked_shop",
        "mark_interest",
        "reminder",
        "thanks",
    ]
    assert steps["welcome"] | {"outcomes": None} == steps["welcome"] | {
        "entered": 4,
        "visits": 4,
        "now": 0,
        "passed": 4,
        "exited": 0,
        "exits": {},
        "outcomes": None,
    }
    assert (steps["clicked_shop"]["entered"], steps["clicked_shop"]["now"]) == (4, 3)
    assert steps["clicked_shop"]["passed"] == 1
    assert sum(steps["clicked_shop"]["outcomes"].values()) == 1
    assert (steps["thanks"]["entered"], steps["thanks"]["exits"]) == (1, {"completed": 1})
    assert steps["thanks"]["passed"] == 0  # it ended there: an exit, not a pass
    assert steps["reminder"]["entered"] == 0
    assert body["enrollments"] == {"active": 3, "completed": 1}

    funnels = {funnel["step_id"]: funnel for funnel in body["sends"]}
    welcome = funnels["welcome"]
    assert {k: welcome[k] for k in ("messages", "sent", "skipped", "failed", "delivered")} == {
        "messages": 4,
        "sent": 3,
        "skipped": {"no_email_address": 1},
        "failed": {},
        # The development outbox delivers at once; the delivery report adds nothing more.
        "delivered": 3,
    }
    assert (welcome["opened"], welcome["opened_contacts"], welcome["machine_opens"]) == (2, 2, 1)
    assert (welcome["clicked"], welcome["links"]) == (1, {"shop": 1})
    assert (welcome["bounced"], welcome["complained"], welcome["unsubscribed"]) == (0, 1, 1)
    assert welcome["rates"]["open_rate"] == round(2 / 3, 4)
    assert welcome["rates"]["click_to_open_rate"] == 0.5
    assert funnels["thanks"]["sent"] == 1 and funnels["reminder"]["messages"] == 0

    # The counts are what Postgres holds.
    async with sessions() as session:
        waiting = await session.scalar(
            select(func.count())
            .select_from(Enrollment)
            .where(
                col(Enrollment.current_step) == "clicked_shop", col(Enrollment.status) == "active"
            )
        )
        sent = await session.scalar(
            text("SELECT count(*) FROM messages WHERE step_id = 'welcome' AND status = 'sent'")
        )
    assert (waiting, sent) == (steps["clicked_shop"]["now"], welcome["sent"])

    assert (
        ok(await api.get("/v1/journeys/quickstart/analytics?version=1"))["steps"] == body["steps"]
    )
    missing = await api.get("/v1/journeys/quickstart/analytics?version=2")
    assert missing.status_code == 404 and "no version 2" in missing.text

    today = utcnow().date()
    # An enrollment ends at its workflow's time: on the shared time-skipping server, ahead of
    # the wall clock by whatever earlier tests skipped (a day, or years).
    async with sessions() as session:
        ended_at = await session.scalar(
            select(col(Enrollment.ended_at)).where(col(Enrollment.contact_id) == clicker_id)
        )
    assert ended_at is not None
    ended_on = ended_at.date()
    assert ended_on >= today

    async def daily(first: date, last: date) -> dict[str, dict[str, Any]]:
        body = ok(
            await api.get(
                "/v1/journeys/quickstart/analytics/daily",
                params={"from": str(first), "to": str(last)},
            )
        )
        return {row["date"]: row for row in body["days"]}

    rows = await daily(today - timedelta(days=2), today + timedelta(days=1))
    assert len(rows) == 4
    ends = {day: row["ended"] for day, row in rows.items() if row["ended"]}
    assert ends == ({str(ended_on): 1} if str(ended_on) in rows else {})
    assert (await daily(ended_on, ended_on))[str(ended_on)]["ended"] == 1
    assert rows[str(today)] | {"date": None, "ended": None} == {
        "date": None,
        "entered": 4,
        "ended": None,
        "goal_met": 0,
        "sent": 4,  # three welcomes and a thanks
        "opened": 2,
        "clicked": 1,
        "complained": 1,  # a provider's report
        "unsubscribed": 1,
    }
    assert rows[str(today - timedelta(days=1))]["entered"] == 0


async def test_bad_analytics_queries_are_refused(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/journeys/nope/analytics")).status_code == 404
    bad_zone = await api.get("/v1/journeys/nope/analytics/daily?time_zone=Mars/Base")
    assert bad_zone.status_code == 422
    assert bad_zone.json()["detail"][0]["path"] == "query.time_zone"
    backwards = await api.get("/v1/journeys/nope/analytics/daily?from=2026-02-02&to=2026-02-01")
    assert backwards.status_code == 422 and backwards.json()["detail"][0]["path"] == "query.to"
