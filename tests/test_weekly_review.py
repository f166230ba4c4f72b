"""The weekly review: its numbers, the console page, the email run by the WeeklyReview workflow,
and the Temporal Schedule that starts it (on the real dev server: the test server has none)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update
from sqlmodel import col
from temporalio.client import Client, ScheduleActionStartWorkflow
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from nurture.analytics.review import REVIEW_SCHEDULE_ID, ReviewRun, weekly_review
from nurture.analytics.schedule import ensure_review_schedule
from nurture.audience.events import record_engagement
from nurture.binaries import find_binary
from nurture.db.engine import SessionFactory
from nurture.db.models import Enrollment, Message, OutboxMessage, utcnow
from nurture.settings import Settings
from nurture.tracing import dev_server_flags
from tests.support import example, make_contact, publish_journey, reach_step, start
from worker import build_worker
from workflows.weekly_review import WeeklyReview


async def _two_weeks(sessions: SessionFactory, client: Client, task_queue: str) -> None:
    """Quickstart: three contacts enter this week (one clicks), one entered the week before."""
    await publish_journey(sessions, example("quickstart"))
    handles = []
    for _ in range(4):
        contact = await make_contact(sessions)
        enrollment, handle = await start(sessions, client, task_queue, "quickstart", contact)
        await reach_step(handle, "clicked_shop")
        handles.append(enrollment)
    async with sessions.begin() as session:
        message_id = await session.scalar(
            select(col(Message.id)).where(col(Message.enrollment_id) == handles[0].id)
        )
        eight_days_ago = utcnow() - timedelta(days=8)
        await session.execute(
            update(Enrollment)
            .where(col(Enrollment.id) == handles[3].id)
            .values(enrolled_at=eight_days_ago)
        )
        await session.execute(
            update(Message)
            .where(col(Message.enrollment_id) == handles[3].id)
            .values(sent_at=eight_days_ago)
        )
    assert message_id is not None
    await record_engagement(sessions, client, message_id, "click", link="shop")


async def test_review_compares_the_week_with_the_one_before(
    sessions: SessionFactory, client: Client, task_queue: str, worker: None
) -> None:
    await _two_weeks(sessions, client, task_queue)
    async with sessions() as session:
        review = await weekly_review(session, utcnow())
    quickstart = next(j for j in review.journeys if j.key == "quickstart")
    this, before = quickstart.this_week, quickstart.last_week
    assert (this.entered, this.sent, this.opened, this.clicked) == (3, 3, 1, 1)
    assert (before.entered, before.sent, before.clicked) == (1, 1, 0)
    assert this.rates()["click_rate"] == round(1 / 3, 4)
    assert before.rates()["click_rate"] == 0
    assert quickstart.changes()["click_rate"] == round(100 / 3, 2)


async def test_the_review_email_goes_to_the_recipients(
    sessions: SessionFactory, client: Client, task_queue: str, worker: None
) -> None:
    await _two_weeks(sessions, client, task_queue)
    review_queue = f"review-{uuid.uuid4()}"
    settings = Settings(review_recipients="Boss@Example.com, team@example.com")
    async with build_worker(client, sessions, review_queue, settings=settings):
        sent = await client.execute_workflow(
            WeeklyReview.run,
            ReviewRun(at=utcnow()),
            id=f"review-{uuid.uuid4()}",
            task_queue=review_queue,
        )
        assert sent == 2
        # Run again for the same week (a retry): nothing more goes out.
        again = ReviewRun(at=utcnow())
        await client.execute_workflow(
            WeeklyReview.run, again, id=f"review-{uuid.uuid4()}", task_queue=review_queue
        )
    async with sessions() as session:
        mails = list(
            await session.scalars(
                select(OutboxMessage).where(col(OutboxMessage.template) == "weekly-review")
            )
        )
    assert sorted(m.to_address for m in mails) == ["boss@example.com", "team@example.com"]
    body = mails[0].payload
    assert body["subject"].startswith("Nurture weekly review")
    assert "Quickstart" in body["html"] and "33.3%" in body["html"]
    assert "this week: 3 entered, 3 sent" in body["text"]


async def test_the_console_shows_the_review(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, task_queue: str, worker: None
) -> None:
    await _two_weeks(sessions, client, task_queue)
    secret = api.headers["Authorization"].removeprefix("Bearer ")
    login = await api.post(
        "/console/login",
        content=f"api_key={secret}",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": ""},
    )
    assert login.status_code == 303
    # The session cookie sent as a header: httpx deprecates per-request cookies.
    session = "; ".join(f"{name}={value}" for name, value in login.cookies.items())
    page = await api.get("/console/review", headers={"Cookie": session})
    assert page.status_code == 200
    assert "Quickstart: welcome, then follow the click" in page.text
    assert "33.3%" in page.text


@pytest.fixture(scope="module")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=find_binary("temporal"),
        dev_server_extra_args=dev_server_flags(),
    ) as env:
        yield env


async def test_the_schedule_runs_weekly_and_follows_the_settings(
    dev_server: WorkflowEnvironment,
) -> None:
    client = dev_server.client
    await ensure_review_schedule(client, "queue-a", "0 8 * * MON")
    await ensure_review_schedule(client, "queue-b", "30 7 * * FRI")  # a later start, new settings
    described = await client.get_schedule_handle(REVIEW_SCHEDULE_ID).describe()
    action = described.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert (action.workflow, action.task_queue) == ("WeeklyReview", "queue-b")
    upcoming = described.info.next_action_times
    assert upcoming and all(t.weekday() == 4 and (t.hour, t.minute) == (7, 30) for t in upcoming)
