"""What the benchmark does to the stack: journeys, contacts, and the two sides of each
comparison (through the HTTP API, and the bare Temporal call the API ends with)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import httpx
from sqlalchemy import func, select
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from nurture.contracts import (
    ENROLLMENT_WORKFLOW,
    EnrollmentEvent,
    EnrollmentInput,
    enrollment_workflow_id,
)
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, Enrollment, utcnow
from nurture.journeys.definition import JourneyDefinition
from nurture.journeys.publishing import publish, save_draft
from nurture.tracing import initial_search_attributes

T = TypeVar("T")

EVENT_NAME = "bench-ping"

# Enrollments that stay asleep: the first step is a 30-day wait.
SLEEP_JOURNEY: dict[str, Any] = {
    "key": "bench-sleep",
    "name": "Benchmark: sleep 30 days",
    "start": "sleep",
    "steps": {"sleep": {"type": "wait", "duration": "30d"}},
}

# Enrollments that wait for one custom event (long timeout), then complete.
EVENT_JOURNEY: dict[str, Any] = {
    "key": "bench-event",
    "name": "Benchmark: wait for an event",
    "start": "await_event",
    "steps": {
        "await_event": {
            "type": "wait_for",
            "event": {"type": "custom", "name": EVENT_NAME},
            "timeout": "30d",
        }
    },
}


@dataclass(frozen=True)
class Published:
    key: str
    journey_id: uuid.UUID
    version_id: uuid.UUID
    version: int
    definition: JourneyDefinition
    first_step: str


async def publish_journey(sessions: SessionFactory, data: dict[str, Any]) -> Published:
    async with sessions.begin() as session:
        journey = await save_draft(session, dict(data))
        version = await publish(session, data["key"])
    definition = JourneyDefinition.model_validate(version.definition)
    return Published(
        key=data["key"],
        journey_id=journey.id,
        version_id=version.id,
        version=version.version,
        definition=definition,
        first_step=definition.start,
    )


async def make_contacts(sessions: SessionFactory, count: int, label: str) -> list[uuid.UUID]:
    """Contacts written straight to the database (not timed, not through the API)."""
    ids = [uuid.uuid4() for _ in range(count)]
    for start in range(0, count, 1000):
        async with sessions.begin() as session:
            session.add_all(
                Contact(
                    id=cid, external_id=f"{label}-{cid.hex}", email=f"{cid.hex[:12]}@bench.test"
                )
                for cid in ids[start : start + 1000]
            )
    return ids


async def make_pending_enrollments(
    sessions: SessionFactory, journey: Published, contact_ids: Sequence[uuid.UUID]
) -> list[Enrollment]:
    """The rows the API would have committed before starting each workflow (not timed): the
    bare side needs them so that its workflows do exactly the work the API's workflows do."""
    rows = [
        Enrollment(
            journey_id=journey.journey_id,
            journey_version_id=journey.version_id,
            version=journey.version,
            contact_id=cid,
            workflow_id=enrollment_workflow_id(journey.key, cid),
        )
        for cid in contact_ids
    ]
    for start in range(0, len(rows), 1000):
        async with sessions.begin() as session:
            session.add_all(rows[start : start + 1000])
    return rows


# --- the two sides -------------------------------------------------------------------------------


async def bare_start(
    client: Client, task_queue: str, journey: Published, enrollment: Enrollment
) -> None:
    """Exactly the `client.start_workflow` call of `nurture.journeys.enrollments.start_workflow`: same
    workflow type, input, id, policies, summary and search attributes."""
    await client.start_workflow(
        ENROLLMENT_WORKFLOW,
        EnrollmentInput(
            enrollment_id=enrollment.id,
            contact_id=enrollment.contact_id,
            journey_key=journey.key,
            version=journey.version,
            definition=journey.definition,
            max_steps_per_run=500,
            paused=False,
        ),
        id=enrollment.workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary=(
            f"{journey.definition.name} (v{journey.version}) for contact {enrollment.contact_id}"
        ),
        search_attributes=initial_search_attributes(
            str(enrollment.contact_id), journey.key, journey.version
        ),
    )


class ApiClient:
    """The load generator's side of the API calls: JSON POSTs on kept-alive connections.

    `aiohttp` (the default) parses HTTP in C, as the bare side's Temporal client does its gRPC
    in Rust: with `httpx` (pure Python) the load generator spent 2.2-3.2 ms of CPU per call on
    the same two cores, against 0.9-1.4 ms for a bare call, and that CPU was taken from the API
    under test. `--client httpx` keeps the old client for comparison."""

    def __init__(self, base_url: str, secret: str, concurrency: int, kind: str = "aiohttp"):
        self.kind = kind
        self._base_url = base_url
        self._headers = {"Authorization": f"Bearer {secret}"}
        self._concurrency = concurrency
        self._aiohttp: aiohttp.ClientSession | None = None
        self._httpx: httpx.AsyncClient | None = None

    async def __aenter__(self) -> ApiClient:
        if self.kind == "aiohttp":
            self._aiohttp = aiohttp.ClientSession(
                base_url=self._base_url,
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=self._concurrency),
                timeout=aiohttp.ClientTimeout(total=120),
            )
        else:
            self._httpx = httpx.AsyncClient(
                base_url=self._base_url,
                headers=self._headers,
                limits=httpx.Limits(
                    max_connections=self._concurrency,
                    max_keepalive_connections=self._concurrency,
                ),
                timeout=120,
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._aiohttp is not None:
            await self._aiohttp.close()
        if self._httpx is not None:
            await self._httpx.aclose()

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any, str]:
        """The status, the parsed JSON answer (None if not JSON) and the raw text."""
        if self._aiohttp is not None:
            async with self._aiohttp.post(path, json=body) as response:
                text = await response.text()
                status = response.status
        else:
            assert self._httpx is not None
            answer = await self._httpx.post(path, json=body)
            text, status = answer.text, answer.status_code
        try:
            return status, json.loads(text), text
        except ValueError:
            return status, None, text


async def api_enroll(http: ApiClient, journey_key: str, contact_id: uuid.UUID) -> None:
    status, _, text = await http.post(
        "/v1/enrollments", {"journey_key": journey_key, "contact_id": str(contact_id)}
    )
    if status != 201:
        raise RuntimeError(f"POST /v1/enrollments: {status} {text}")


async def bare_signal(client: Client, journey_key: str, contact_id: uuid.UUID) -> None:
    """The `handle.signal("event", ...)` that `POST /v1/events` ends with, same payload shape."""
    handle = client.get_workflow_handle(enrollment_workflow_id(journey_key, contact_id))
    await handle.signal(
        "event",
        EnrollmentEvent(
            event_id=f"bare-{contact_id}",
            kind="custom",
            name=EVENT_NAME,
            properties={},
            occurred_at=utcnow(),
        ),
    )


async def api_event(http: ApiClient, contact_id: uuid.UUID) -> None:
    status, answer, text = await http.post(
        "/v1/events",
        {"contact_id": str(contact_id), "name": EVENT_NAME, "idempotency_key": f"api-{contact_id}"},
    )
    if status != 202:
        raise RuntimeError(f"POST /v1/events: {status} {text}")
    if answer is None or answer.get("signalled") != 1:
        raise RuntimeError(f"POST /v1/events reached no enrollment: {text}")


async def api_events(http: ApiClient, contact_ids: Sequence[uuid.UUID]) -> None:
    """The same events as `api_event`, many in one POST /v1/events/batch."""
    status, answer, text = await http.post(
        "/v1/events/batch",
        {
            "events": [
                {"contact_id": str(c), "name": EVENT_NAME, "idempotency_key": f"api-{c}"}
                for c in contact_ids
            ]
        },
    )
    if status != 202:
        raise RuntimeError(f"POST /v1/events/batch: {status} {text[:300]}")
    assert answer is not None
    missed = [r["index"] for r in answer["results"] if r["event"]["signalled"] != 1]
    if missed:
        raise RuntimeError(f"POST /v1/events/batch reached no enrollment for {missed[:5]}")


# --- running and waiting -------------------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    count: int  # calls that succeeded
    seconds: float
    latencies: list[float]  # of the calls that succeeded
    errors: list[str]  # one line per call that failed


async def run_pool(
    items: Sequence[T],
    concurrency: int,
    call: Callable[[T], Awaitable[None]],
    max_errors: int | None = None,
) -> Timed:
    """Call `call(item)` for every item, at most `concurrency` at a time (closed loop: each lane
    sends its next request as soon as the previous one is answered). A failed call is counted,
    not retried; once more than `max_errors` (default: 2 %, at least 10) have failed, no new
    call is made, so that a broken side ends its round instead of timing out call by call."""
    if max_errors is None:
        max_errors = max(10, len(items) // 50)
    pending = iter(items)
    latencies: list[float] = []
    errors: list[str] = []

    async def lane() -> None:
        for item in pending:
            if len(errors) > max_errors:
                return
            began = time.perf_counter()
            try:
                await call(item)
            except Exception as err:
                errors.append(f"{type(err).__name__}: {err}"[:300])
            else:
                latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(lane())
    return Timed(len(latencies), time.perf_counter() - began, latencies, errors)


async def run_batches(
    items: Sequence[T],
    size: int,
    concurrency: int,
    call: Callable[[Sequence[T]], Awaitable[None]],
) -> Timed:
    """`run_pool` over batches of `size` items (one call each); counted in items."""
    done = 0

    async def one(batch: Sequence[T]) -> None:
        nonlocal done
        await call(batch)
        done += len(batch)

    batches = [items[i : i + size] for i in range(0, len(items), size)]
    timed = await run_pool(batches, concurrency, one)
    return Timed(done, timed.seconds, timed.latencies, timed.errors)


async def count_enrollments(
    sessions: SessionFactory, journey_id: uuid.UUID, status: str, step: str | None = None
) -> int:
    query = (
        select(func.count())
        .select_from(Enrollment)
        .where(Enrollment.journey_id == journey_id, Enrollment.status == status)  # type: ignore[arg-type]
    )
    if step is not None:
        query = query.where(Enrollment.current_step == step)  # type: ignore[arg-type]
    async with sessions() as session:
        return int(await session.scalar(query) or 0)


async def wait_for_count(
    sessions: SessionFactory,
    journey_id: uuid.UUID,
    status: str,
    expected: int,
    step: str | None = None,
    within: float = 600,
) -> float:
    """Poll Postgres until `expected` enrollments have this status (and step); return the
    seconds waited."""
    began = time.perf_counter()
    while True:
        found = await count_enrollments(sessions, journey_id, status, step)
        if found >= expected:
            return time.perf_counter() - began
        if time.perf_counter() - began > within:
            raise TimeoutError(
                f"only {found} of {expected} enrollments {status} at {step} after {within:.0f} s"
            )
        await asyncio.sleep(0.2)
