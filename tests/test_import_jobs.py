"""A CSV import as a job (`nurture.audience.import_jobs`): progress readable while the file uploads, the
report kept, in-flight enrollments told of changes, the list's journeys started for the
contacts who joined through the import, and segments re-checked."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.contracts import EnrollmentResult
from nurture.db.engine import SessionFactory
from nurture.db.models import BulkEnrollment
from tests.support import (
    enrolled_in,
    exits_at_once,
    finish,
    make_lists,
    ok,
    publish_journey,
    reach_step,
)

pytestmark = pytest.mark.usefixtures("worker")

CSV = {"Content-Type": "text/csv"}


async def _enrolled(sessions: SessionFactory, journey_key: str, within: float = 30) -> list[str]:
    """External ids enrolled in the journey (sorted), once every enrollment run completed."""
    async with asyncio.timeout(within):
        while True:
            async with sessions() as session:
                running = await session.scalar(
                    select(BulkEnrollment.id).where(col(BulkEnrollment.status) == "running")
                )
            if running is None:
                break
            await asyncio.sleep(0.05)
    return sorted(await enrolled_in(sessions, journey_key))


@pytest.mark.usefixtures("sessions")  # empty tables: the listing below expects this one alone
async def test_progress_can_be_read_while_the_file_is_still_uploading(
    api: httpx.AsyncClient,
) -> None:
    import_id = uuid.uuid4()
    first_batch_sent = asyncio.Event()
    go_on = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"external_id,email\n"
        yield "".join(f"c{n},c{n}@example.com\n" for n in range(1000)).encode()
        first_batch_sent.set()
        await go_on.wait()
        yield b"c1000,c1000@example.com\nc1001,not-an-email\n"

    upload = asyncio.create_task(
        api.post(
            "/v1/contacts/import",
            content=body(),
            params={"import_id": str(import_id)},
            headers=CSV,
        )
    )
    await first_batch_sent.wait()
    async with asyncio.timeout(10):  # the first batch is written, the upload is not over
        while True:
            during = await api.get(f"/v1/imports/{import_id}")
            if during.status_code == 200 and during.json()["rows"] == 1000:
                break
            await asyncio.sleep(0.02)
    go_on.set()
    report = ok(await upload)
    kept = ok(await api.get(f"/v1/imports/{import_id}"))
    listed = ok(await api.get("/v1/imports"))
    again = await api.post(
        "/v1/contacts/import", content=b"email\n", params={"import_id": str(import_id)}, headers=CSV
    )

    assert (during.json()["status"], during.json()["created"]) == ("running", 1000)
    assert during.json()["finished_at"] is None
    assert (report["status"], report["rows"], report["created"]) == ("completed", 1002, 1001)
    assert report["errors"] == [
        {"row": 1003, "message": "email: 'not-an-email' is not an email address"}
    ]
    assert kept == report
    assert [job["id"] for job in listed] == [str(import_id)]
    assert again.status_code == 409


async def test_a_failed_import_says_why_and_keeps_the_rows_written_before(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    import_id = uuid.uuid4()

    async def body() -> AsyncIterator[bytes]:
        yield b"external_id\n"
        yield "".join(f"c{n}\n" for n in range(1000)).encode()
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await api.post(
            "/v1/contacts/import",
            content=body(),
            params={"import_id": str(import_id)},
            headers=CSV,
        )
    job = ok(await api.get(f"/v1/imports/{import_id}"))

    assert (job["status"], job["failure"], job["created"]) == (
        "failed",
        "ConnectionResetError",
        1000,
    )
    assert job["finished_at"] is not None


async def test_an_import_tells_in_flight_enrollments_so_a_goal_met_by_it_ends_them(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    examples_dir: Path,
) -> None:
    definition = json.loads((examples_dir / "hubspot-nurture-goal.json").read_text())
    await publish_journey(sessions, definition)
    ok(await api.put("/v1/contacts/lead-1", json={"email": "lead@example.com"}), 201)
    enrolled = ok(
        await api.post(
            "/v1/enrollments", json={"journey_key": definition["key"], "external_id": "lead-1"}
        ),
        201,
    )
    handle = client.get_workflow_handle(enrolled["workflow_id"], result_type=EnrollmentResult)
    await reach_step(handle, "wait_2d")

    csv = "external_id,lifecycle_stage\nlead-1,customer\nother,lead\n"
    report = ok(await api.post("/v1/contacts/import", content=csv.encode(), headers=CSV))
    result = await finish(env, handle)

    assert report["enrollments_signalled"] == 1
    assert (result.status, result.reason) == ("exited", "goal_met")


async def test_contacts_who_join_the_list_through_an_import_start_its_journeys(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await make_lists(sessions, "webinar")
    await publish_journey(
        sessions, exits_at_once("webinar-welcome", {"type": "list_joined", "list": "webinar"})
    )
    ok(await api.put("/v1/contacts/already", json={"email": "already@example.com"}), 201)
    async with sessions.begin() as session:  # a member from before: joined without the API
        from sqlalchemy import text

        await session.execute(
            text(
                "INSERT INTO list_memberships (list_id, contact_id, added_at) "
                "SELECT l.id, c.id, now() - interval '1 day' FROM lists l, contacts c "
                "WHERE l.key = 'webinar' AND c.external_id = 'already'"
            )
        )

    csv = "external_id,email\nalready,already@example.com\nnew-1,n1@example.com\nnew-2,n2@example.com\n"
    report = ok(
        await api.post(
            "/v1/contacts/import", content=csv.encode(), params={"list": "webinar"}, headers=CSV
        )
    )

    assert report["enrollment_runs"] == [f"import:{report['id']}:webinar-welcome"]
    assert await _enrolled(sessions, "webinar-welcome") == ["new-1", "new-2"]


async def test_contacts_an_import_puts_in_a_segment_enter_its_journeys(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    vips = {"name": "VIPs", "filter": {"type": "tag", "tag": "vip", "op": "has"}}
    ok(await api.put("/v1/segments/vips", json=vips), 201)
    await publish_journey(
        sessions, exits_at_once("vip-welcome", {"type": "segment_entered", "segment": "vips"})
    )
    # No watch runs yet (no worker process started one): the import's request starts it.
    csv = "external_id,tags\nstar,vip\nplain,\n"
    ok(await api.post("/v1/contacts/import", content=csv.encode(), headers=CSV))

    async with asyncio.timeout(30):  # the watch's sweep, asked for by the import
        while True:
            enrolled = await _enrolled(sessions, "vip-welcome")
            if enrolled:
                break
            await asyncio.sleep(0.05)
    assert enrolled == ["star"]
