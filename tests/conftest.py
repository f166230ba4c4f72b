"""Shared fixtures: a real Postgres (embedded unless DATABASE_URL is set) migrated once, and
Temporal's time-skipping test server from the pip-installed binary (never downloaded)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from nurture.binaries import find_binary
from nurture.db.engine import SessionFactory, create_engine, session_factory
from nurture.db.migrate import upgrade_async
from nurture.embedded import start_embedded_postgres
from nurture.settings import Settings
from nurture.tracing import ensure_search_attributes

TABLES = (
    "templates, api_keys, bulk_enrollments, "
    "events, messages, outbox_messages, enrollment_steps, enrollments, journey_versions, "
    "journeys, list_memberships, lists, contacts, applied_operations"
)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    server, url = start_embedded_postgres(tmp_path_factory.mktemp("pg") / "data", "nurture_test")
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


@pytest.fixture(autouse=True)
async def terminate_leftovers() -> AsyncIterator[None]:
    from tests.support import STARTED

    STARTED.clear()
    yield
    for handle in STARTED:
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate("test finished")
    STARTED.clear()


@pytest.fixture
async def worker(client: Client, sessions: SessionFactory, task_queue: str) -> AsyncIterator[None]:
    """The real worker (real activities, development outbox) on this test's own task queue."""
    from worker import build_worker

    async with build_worker(client, sessions, task_queue):
        yield


@pytest.fixture
def settings(task_queue: str) -> Settings:
    return Settings(
        database_url="unused-in-tests",
        temporal_task_queue=task_queue,
        temporal_ui_url="http://temporal-ui.test",
        max_body_bytes=64 * 1024,
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
