"""Shared fixtures: a real Postgres (embedded unless DATABASE_URL is set) migrated once, and
Temporal's time-skipping test server from the pip-installed binary (never downloaded)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from nurture.binaries import find_binary
from nurture.db.engine import SessionFactory, create_engine, session_factory
from nurture.db.migrate import upgrade_async
from nurture.embedded import start_embedded_postgres
from nurture.settings import Settings
from nurture.tracing import ensure_search_attributes

TABLES = (
    "segments, webhook_events, suppressions, template_versions, templates, api_keys, bulk_enrollments, "
    "events, messages, outbox_messages, enrollment_steps, enrollments, journey_versions, "
    "journeys, list_memberships, lists, contacts, applied_operations, contact_imports, "
    "contact_changes, timeline_notes, send_rules, send_claims, send_holds, "
    "owner_assignments, team_owners, owner_teams, score_points, scoring_rules, device_tokens, "
    "segment_sweeps, "
    "message_stats, message_link_clicks"
)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    server, url = start_embedded_postgres(tmp_path_factory.mktemp("pg") / "data", "nurture_test")
    # A throwaway database: nothing waits on the disk. Each test truncates every table (new
    # files, fsynced), and a commit queued behind that flush stalled a tracked click for 3 s
    # on a loaded CI machine. The outage tests' own server (tests/outage.py) keeps the defaults.
    server.psql(
        "ALTER SYSTEM SET fsync = off;\n"
        "ALTER SYSTEM SET synchronous_commit = off;\n"
        "ALTER SYSTEM SET full_page_writes = off;\n"
        "SELECT pg_reload_conf();\n"
    )
    yield url
    server.cleanup()


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await upgrade_async(database_url)
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: AsyncEngine) -> SessionFactory:
    return session_factory(engine)


@pytest.fixture(autouse=True)
async def clean_database(request: pytest.FixtureRequest) -> None:
    """Each database test starts from empty tables (activities commit, so no rollback trick)."""
    if "sessions" not in request.fixturenames:
        return
    engine: AsyncEngine = request.getfixturevalue("engine")
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {TABLES} CASCADE"))


@pytest.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=find_binary("temporal-test-server"),
    ) as env:
        await ensure_search_attributes(env.client, env.client.namespace)
        yield env


@pytest.fixture
def client(env: WorkflowEnvironment) -> Client:
    """The test server's client, recording every workflow started through it (see below)."""
    config = env.client.config()
    config["interceptors"] = [*config["interceptors"], RecordStarts()]
    return Client(**config)


class RecordStarts(Interceptor):
    """Remember each started workflow so the test's teardown can end the ones still running:
    the time-skipping server stops skipping while any activity waits for a worker that is gone,
    which would stall every later test."""

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _RecordingOutbound(next)


class _RecordingOutbound(OutboundInterceptor):
    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        from tests.support import STARTED

        handle = await super().start_workflow(input)
        STARTED.append(handle)
        return handle


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4()}"


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "examples" / "journeys"


async def _terminate_started(settle_within: float = 10) -> None:
    """Terminate the workflows this test started that still run, each once it is idle.

    The test server keeps time skipping locked for good when a workflow is terminated while
    one of its activities or workflow tasks is in flight, stalling every later test. So wait
    until none is (with the clock locked between tests, an idle enrollment stays idle)."""
    from tests.support import STARTED

    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle_within
    for handle in STARTED:
        while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            if loop.time() > deadline or await _idle(handle):
                try:
                    await handle.terminate("test finished")
                except RPCError as err:  # it ended meanwhile
                    if err.status != RPCStatusCode.NOT_FOUND:
                        raise
                break
            await asyncio.sleep(0.02)
    STARTED.clear()


_ACTIVITY_ENDS = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}


async def _idle(handle: WorkflowHandle[Any, Any]) -> bool:
    """No activity and no workflow task in flight or due, read from one look at the history
    (the test server's describe does not report workflow tasks)."""
    open_activities: set[int] = set()
    workflow_task_due = False
    async for event in handle.fetch_history_events():
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            open_activities.add(event.event_id)
        elif kind in _ACTIVITY_ENDS:
            open_activities.discard(getattr(event, _ACTIVITY_ENDS[kind]).scheduled_event_id)
        elif kind in _WORKFLOW_TASK_ENDS:
            workflow_task_due = False
        elif kind in (
            EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
        ):
            workflow_task_due = True
    return not open_activities and not workflow_task_due


_WORKFLOW_TASK_ENDS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
}


@pytest.fixture(autouse=True)
async def terminate_leftovers() -> AsyncIterator[None]:
    from tests.support import STARTED

    STARTED.clear()
    yield
    # Anything left here ran without a worker (or outlived it): nothing will settle, end it now.
    await _terminate_started(settle_within=0)


@pytest.fixture
async def worker(client: Client, sessions: SessionFactory, task_queue: str) -> AsyncIterator[None]:
    """The real worker (real activities, development outbox) on this test's own task queue.

    The test's workflows are ended while the worker still runs: an activity it had picked up
    and abandoned at shutdown would keep the test server from skipping time for every later
    test (a terminated workflow does not release it)."""
    from worker import build_worker

    async with build_worker(client, sessions, task_queue):
        yield
        await _terminate_started()


@pytest.fixture
def settings(task_queue: str) -> Settings:
    return Settings(
        database_url="unused-in-tests",
        temporal_task_queue=task_queue,
        temporal_ui_url="http://temporal-ui.test",
        max_body_bytes=64 * 1024,
        allowed_hosts=["nurture.test"],  # the tests' HTTP clients use http://nurture.test
    )


@pytest.fixture
async def api(
    sessions: SessionFactory, client: Client, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the app (in-process ASGI), authenticated with a fresh API key."""
    from api.app import create_app
    from api.resources import Resources
    from nurture.apikeys import create_api_key

    app = create_app(Resources(settings=settings, sessions=sessions, temporal=client))
    key = await create_api_key(sessions, "tests")
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key.secret}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://nurture.test", headers=headers
    ) as http:
        yield http


@pytest.fixture
async def counted_api(
    database_url: str, client: Client, settings: Settings, sessions: SessionFactory
) -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
    """Like `api`, on an engine of its own whose driver statements are logged (asyncpg's query
    logger, `tests.support.log_driver_statements`): the client and that log."""
    from tests.support import app_client, log_driver_statements

    engine = create_engine(database_url)
    statements: list[str] = []
    log_driver_statements(engine, statements.append)
    async with app_client(session_factory(engine), client, settings, sessions) as http:
        yield http, statements
    await engine.dispose()
