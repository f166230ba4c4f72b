"""Concurrent enroll and event requests of one process share their statements
(`nurture.db.together`: group commit), and each still gets its own answer: the contact it
named, its own refusal, its own duplicate (issue 11, item 2; docs/benchmarks.md).

Statements are counted on the driver connection with asyncpg's query logger
(`tests.support.log_driver_statements`), on an engine of the test's own."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from nurture.contracts import enrollment_workflow_id
from nurture.db.engine import SessionFactory
from nurture.db.models import Enrollment, Event, JourneyVersion
from nurture.journeys.enrollments import _Claim, _insert_claims
from tests.support import make_contact, publish_journey

WAITING: dict[str, Any] = {
    "key": "shared-wait",
    "name": "Shared statements",
    "start": "ping",
    "steps": {
        "ping": {
            "type": "wait_for",
            "event": {"type": "custom", "name": "shared-ping"},
            "timeout": "30d",
        }
    },
}
REQUESTS = 8


def _count(statements: list[str], start: str) -> int:
    return sum(1 for s in statements if s.startswith(start))


@pytest.mark.usefixtures("worker")
async def test_concurrent_enrollments_share_their_claim_statements(
    sessions: SessionFactory, counted_api: tuple[httpx.AsyncClient, list[str]]
) -> None:
    http, statements = counted_api
    await publish_journey(sessions, WAITING)
    contacts = [await make_contact(sessions, external_id=f"sh-{i}") for i in range(REQUESTS)]
    # Half named by id, half by external id; one contact asked twice at once; one unknown.
    bodies: list[dict[str, str]] = [
        {"journey_key": "shared-wait", "contact_id": str(c)}
        if i % 2
        else {"journey_key": "shared-wait", "external_id": f"sh-{i}"}
        for i, c in enumerate(contacts)
    ]
    bodies.append({"journey_key": "shared-wait", "contact_id": str(contacts[1])})
    bodies.append({"journey_key": "shared-wait", "external_id": "sh-nobody"})
    await asyncio.sleep(0.05)
    statements.clear()

    answers = await asyncio.gather(*(http.post("/v1/enrollments", json=b) for b in bodies))
    await asyncio.sleep(0.05)  # asyncpg calls its query loggers soon after

    *known, twice, unknown = answers
    for contact, answer in zip(contacts, known, strict=True):
        assert answer.status_code in (200, 201), answer.text
        assert answer.json()["contact_id"] == str(contact)
    assert twice.status_code in (200, 201), twice.text
    assert twice.json()["id"] == known[1].json()["id"]
    assert unknown.status_code == 404
    assert "sh-nobody" in unknown.json()["detail"]
    async with sessions() as session:
        rows = (
            await session.execute(
                select(col(Enrollment.contact_id), func.count()).group_by(
                    col(Enrollment.contact_id)
                )
            )
        ).all()
    assert dict(rows) == dict.fromkeys(contacts, 1)
    # Ten claims read, eight rows inserted, in fewer statements than requests.
    reads = _count(statements, "SELECT j.id, j.status") + _count(statements, "SELECT i.n, j.id")
    inserts = _count(statements, "INSERT INTO enrollments")
    assert 1 <= reads < len(bodies), statements
    assert 1 <= inserts < REQUESTS, statements


async def test_one_claim_refused_in_a_shared_insert_leaves_the_others_inserted(
    sessions: SessionFactory,
) -> None:
    """A shared insert that fails (here: a contact that is not there, as when one is erased
    between the read and the insert) is retried claim by claim, so only that claim gets the
    error; a second in-flight row of a contact is the IntegrityError the claim retries on."""
    await publish_journey(sessions, WAITING)
    async with sessions() as session:
        version = await session.scalar(select(JourneyVersion))
    assert version is not None
    present = [await make_contact(sessions) for _ in range(3)]

    def claim(contact: uuid.UUID) -> _Claim:
        return _Claim(
            Enrollment(
                journey_id=version.journey_id,
                journey_version_id=version.id,
                version=version.version,
                contact_id=contact,
                workflow_id=enrollment_workflow_id("shared-wait", contact),
                entered_by="api",
            )
        )

    first = [claim(c) for c in present]
    assert await _insert_claims(sessions, first) == {}  # all inserted, in one statement
    again = claim(present[0])  # in flight already
    gone = claim(uuid.uuid4())
    fresh = [claim(await make_contact(sessions)) for _ in range(2)]
    refused = await _insert_claims(sessions, [fresh[0], again, gone, fresh[1]])

    assert set(refused) == {again, gone}
    assert isinstance(refused[again], IntegrityError)
    assert isinstance(refused[gone], asyncpg.ForeignKeyViolationError)
    async with sessions() as session:
        ids = set(await session.scalars(select(col(Enrollment.id))))
    assert ids == {c.enrollment.id for c in [*first, *fresh]}


@pytest.mark.usefixtures("worker")
async def test_concurrent_events_share_their_statement_and_keep_their_own_answers(
    sessions: SessionFactory, counted_api: tuple[httpx.AsyncClient, list[str]]
) -> None:
    http, statements = counted_api
    await publish_journey(sessions, WAITING)
    contacts = [await make_contact(sessions, external_id=f"ev-{i}") for i in range(REQUESTS)]
    for contact in contacts:
        answer = await http.post(
            "/v1/enrollments", json={"journey_key": "shared-wait", "contact_id": str(contact)}
        )
        assert answer.status_code == 201, answer.text
    bodies: list[dict[str, Any]] = [
        {"contact_id": str(c), "name": "shared-ping", "properties": {"n": i}}
        if i % 2
        else {"external_id": f"ev-{i}", "name": "shared-ping", "properties": {"n": i}}
        for i, c in enumerate(contacts)
    ]
    # Two with one idempotency key at once (a client retrying), and an unknown contact.
    bodies[0]["idempotency_key"] = "shared-key"
    bodies.append({**bodies[0]})
    bodies.append({"external_id": "ev-nobody", "name": "shared-ping"})
    await asyncio.sleep(0.05)
    statements.clear()

    answers = await asyncio.gather(*(http.post("/v1/events", json=b) for b in bodies))
    await asyncio.sleep(0.05)

    *known, repeated, unknown = answers
    for contact, answer in zip(contacts, known, strict=True):
        assert answer.status_code == 202, answer.text
        assert answer.json()["contact_id"] == str(contact)
    # Whichever of the two went first stored the event and signalled it; the other is its
    # duplicate, signalling nothing.
    pair = sorted([known[0].json(), repeated.json()], key=lambda a: a["duplicate"])
    assert repeated.status_code == 202, repeated.text
    assert [a["duplicate"] for a in pair] == [False, True]
    assert pair[0]["id"] == pair[1]["id"]
    assert [a["signalled"] for a in pair] == [1, 0]
    assert all(a.json()["signalled"] == 1 for a in known[1:])
    assert unknown.status_code == 404
    async with sessions() as session:
        stored = (
            await session.execute(
                select(col(Event.contact_id), col(Event.properties)).where(
                    col(Event.name) == "shared-ping"
                )
            )
        ).all()
    assert sorted((str(c), p["n"]) for c, p in stored) == sorted(
        (str(c), i) for i, c in enumerate(contacts)
    )
    shared = _count(statements, "WITH c AS") + _count(statements, "WITH i AS")
    assert 1 <= shared < REQUESTS, statements
