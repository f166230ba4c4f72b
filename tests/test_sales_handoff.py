"""The setup guide's sales hand-off (issue 13), end to end on the time-skipping server:
lead scoring takes a contact over a threshold, the `score >= 50` segment starts the
journey, an owner is assigned in turn, and a webhook tells a CRM (a real HTTP server on
loopback that checks the signature), whose answer is saved on the contact."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlmodel import col, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.audience.timeline import contact_timeline
from nurture.contracts import EnrollmentResult
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, Enrollment, EnrollmentStep, OutboxMessage
from nurture.outbound.webhooks import verify_signature
from nurture.settings import Settings
from tests.conftest import _terminate_started
from tests.loopback import serve
from tests.support import finish, ok, publish_journey, steps_of

SECRET = "crm-shared-secret"


@dataclass
class Crm:
    """A CRM's lead endpoint: refuses unsigned calls, answers 422 for a lead it rejects and
    503 once for a flaky one."""

    url: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    flaked: set[str] = field(default_factory=set)

    async def leads(self, request: Request) -> JSONResponse:
        body = await request.body()
        signed = verify_signature(
            SECRET.encode(),
            request.headers.get("x-nurture-timestamp", ""),
            body,
            request.headers.get("x-nurture-signature", ""),
        )
        if not signed:
            return JSONResponse({"error": "bad signature"}, status_code=401)
        lead = json.loads(body)
        self.calls.append({"lead": lead, "key": request.headers["idempotency-key"]})
        if lead["email"].startswith("rejected"):
            return JSONResponse({"error": "duplicate lead"}, status_code=422)
        if lead["email"].startswith("flaky") and lead["email"] not in self.flaked:
            self.flaked.add(lead["email"])
            return JSONResponse({"error": "try later"}, status_code=503)
        return JSONResponse({"id": f"crm-{len(self.calls)}", "owner": lead["owner_email"]})


@pytest.fixture
async def crm() -> AsyncIterator[Crm]:
    crm = Crm()
    app = Starlette(routes=[Route("/leads", crm.leads, methods=["POST"])])
    async with serve(app) as base:
        crm.url = base
        yield crm


@pytest.fixture
async def handoff_worker(
    client: Client, sessions: SessionFactory, task_queue: str, settings: Settings
) -> AsyncIterator[None]:
    """The real worker, allowed to call the loopback CRM, signing with the CRM's secret."""
    from worker import build_worker

    allowed = settings.model_copy(
        update={"outbound_allowlist": ["127.0.0.1"], "webhook_signing_secret": SecretStr(SECRET)}
    )
    async with build_worker(client, sessions, task_queue, settings=allowed):
        yield
        await _terminate_started()


GUIDE = Path(__file__).resolve().parent.parent / "examples" / "sales-handoff" / "journey.json"


def handoff_journey(crm_url: str) -> dict[str, Any]:
    """The setup guide's journey (docs/sales-handoff.md), pointed at the loopback CRM."""
    journey: dict[str, Any] = json.loads(GUIDE.read_text())
    journey["steps"]["crm"]["url"] = crm_url + "/leads"
    journey["steps"]["crm"]["retries"] = 3
    return journey


async def _setup(api: httpx.AsyncClient, sessions: SessionFactory, crm: Crm) -> None:
    team = {
        "name": "Sales",
        "owners": [
            {"name": "Ann Owner", "email": "ann@sales.example"},
            {"name": "Bob Owner", "email": "bob@sales.example"},
        ],
    }
    ok(await api.put("/v1/owner-teams/sales", json=team), 201)
    rules = {
        "pricing": {"kind": "event", "match": {"name": "pricing_viewed"}, "points": 30},
        "vp": {
            "kind": "condition",
            "match": {"type": "field", "field": "job_title", "op": "contains", "value": "VP"},
            "points": 25,
        },
    }
    for key, rule in rules.items():
        ok(await api.put(f"/v1/scoring-rules/{key}", json=rule), 201)
    hot = {
        "name": "Hot",
        "filter": {"type": "field", "field": "fields.score", "op": "gte", "value": 50},
    }
    ok(await api.put("/v1/segments/hot-leads", json=hot), 201)
    intro = {
        "subject": "Meet {{ fields.owner.name }}",
        "text": "{{ fields.owner.name }} ({{ fields.owner.email }}) will call you.",
    }
    ok(await api.put("/v1/templates/email/owner-intro", json=intro))
    await publish_journey(sessions, handoff_journey(crm.url))


async def _heat_up(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, email: str
) -> tuple[uuid.UUID, Any]:
    """A VP (25 points) views pricing (30 more): 55 crosses 50 and the journey starts."""
    external_id = email.split("@")[0]
    contact = ok(
        await api.put(
            f"/v1/contacts/{external_id}",
            json={"email": email, "fields": {"job_title": "VP Marketing"}},
        ),
        201,
    )
    ok(
        await api.post("/v1/events", json={"external_id": external_id, "name": "pricing_viewed"}),
        202,
    )
    contact_id = uuid.UUID(contact["id"])
    async with sessions() as session:  # started by the event's announcement, already
        workflow_id = await session.scalar(
            select(col(Enrollment.workflow_id)).where(col(Enrollment.contact_id) == contact_id)
        )
    assert workflow_id is not None, "the hot-leads journey did not start"
    return contact_id, client.get_workflow_handle(workflow_id, result_type=EnrollmentResult)


async def test_score_threshold_assign_owner_webhook_to_crm(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    crm: Crm,
    handoff_worker: None,
) -> None:
    await _setup(api, sessions, crm)
    leads = ["lead-a@example.com", "lead-b@example.com", "flaky@example.com"]
    results: dict[str, EnrollmentResult] = {}
    contacts: dict[str, uuid.UUID] = {}
    for email in leads:
        contacts[email], handle = await _heat_up(api, sessions, client, email)
        results[email] = await finish(env, handle)

    owners = []
    for email in leads:
        result = results[email]
        assert (result.status, steps_of(result)) == ("completed", ["assign", "crm", "intro"])
        async with sessions() as session:
            contact = await session.get(Contact, contacts[email])
            intro = await session.scalar(
                select(OutboxMessage).where(col(OutboxMessage.to_address) == email)
            )
        assert contact is not None and intro is not None
        owner = contact.fields["owner"]
        owners.append(owner["email"])
        assert owner["team"] == "sales"
        assert contact.fields["score"] == 55
        assert contact.fields["crm_id"].startswith("crm-")  # saved from the CRM's answer
        # The email template reaches the owner's name and email.
        assert intro.payload["text"] == f"{owner['name']} ({owner['email']}) will call you."
        assert (result.path[0].outcome or "").startswith(f"assigned {owner['name']} (turn ")
        assert result.path[1].outcome == "HTTP 200, saved crm_id"
    # Round-robin: Ann, Bob, Ann.
    assert owners == ["ann@sales.example", "bob@sales.example", "ann@sales.example"]

    # Every call was signed (the CRM refuses others) and carried the step's idempotency key;
    # the flaky lead's 503 was retried with the same key.
    flaky_calls = [c for c in crm.calls if c["lead"]["email"] == "flaky@example.com"]
    assert len(flaky_calls) == 2 and flaky_calls[0]["key"] == flaky_calls[1]["key"]
    assert {c["lead"]["score"] for c in crm.calls} == {"55"}

    async with sessions() as session:
        timeline = await contact_timeline(session, contacts["lead-a@example.com"])
    words = [entry.summary for entry in timeline.entries]
    assert any("step crm (webhook): called: HTTP 200, saved crm_id" in w for w in words), words
    assert any("step assign (assign owner): assigned Ann Owner" in w for w in words), words


async def test_a_lead_the_crm_rejects_fails_the_step_with_the_reason(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    crm: Crm,
    handoff_worker: None,
) -> None:
    await _setup(api, sessions, crm)
    contact_id, handle = await _heat_up(api, sessions, client, "rejected@example.com")
    result = await finish(env, handle)
    assert steps_of(result) == ["assign", "crm", "flag"]
    assert (
        result.path[1].outcome
        == 'failed: HTTP 422 Unprocessable Entity: {"error":"duplicate lead"}'
    )
    assert len(crm.calls) == 1  # a 4xx is not retried
    async with sessions() as session:
        contact = await session.get(Contact, contact_id)
        recorded = await session.scalar(
            select(col(EnrollmentStep.outcome)).where(col(EnrollmentStep.step_id) == "crm")
        )
    assert contact is not None and "crm-sync-failed" in contact.tags
    assert "crm_id" not in contact.fields
    assert recorded == result.path[1].outcome


async def test_without_the_allowlist_the_loopback_crm_is_refused(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    crm: Crm,
    worker: None,  # the default worker: nothing allowlisted
) -> None:
    await _setup(api, sessions, crm)
    _, handle = await _heat_up(api, sessions, client, "lead-c@example.com")
    result = await finish(env, handle)
    assert steps_of(result) == ["assign", "crm", "flag"]
    assert result.path[1].outcome == (
        "failed: destination 127.0.0.1 is loopback: refused (not in OUTBOUND_ALLOWLIST)"
    )
    assert crm.calls == []
