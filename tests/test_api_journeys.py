"""Journeys and templates through the HTTP API: drafts, validation, publishing, status changes;
authentication, the error shape and the body size limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.db.engine import SessionFactory
from nurture.db.models import EnrollmentStep, JourneyVersion
from nurture.settings import Settings
from tests.support import (
    example,
    finish,
    make_contact,
    ok,
    problems,
    progress,
    reach_step,
    sent_templates,
    start,
)

HUBSPOT = "hubspot-nurture-goal"
HUBSPOT_TEMPLATES = ("nurture-intro", "nurture-case-study", "nurture-offer")


async def put_templates(api: httpx.AsyncClient, *keys: str) -> None:
    for key in keys:
        ok(await api.put(f"/v1/templates/email/{key}", json={"subject": key, "text": "Hi"}))


async def create_published(api: httpx.AsyncClient, name: str) -> dict[str, Any]:
    definition = example(name)
    ok(await api.post("/v1/journeys", json=definition), 201)
    for step in definition["steps"].values():
        if step["type"] == "send_email":
            await put_templates(api, step["template"])
    return dict(ok(await api.post(f"/v1/journeys/{definition['key']}/publish"), 201))


@pytest.fixture
async def anonymous(
    sessions: SessionFactory, client: Client, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    """The same app, with no API key."""
    from api.app import create_app
    from api.resources import Resources

    app = create_app(Resources(settings=settings, sessions=sessions, temporal=client))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://nurture.test"
    ) as http:
        yield http


# --- authentication, error shape, size limit -------------------------------------------------


async def test_every_route_needs_a_valid_api_key(anonymous: httpx.AsyncClient) -> None:
    missing = await anonymous.get("/v1/journeys")
    wrong = await anonymous.get(
        "/v1/journeys", headers={"Authorization": "Bearer nurture_not-a-real-key"}
    )
    wrong_write = await anonymous.post(
        "/v1/journeys",
        json=example(HUBSPOT),
        headers={"Authorization": "Bearer nurture_not-a-real-key"},
    )

    assert missing.status_code == 401
    assert missing.json()["error"] == "unauthorized"
    assert "missing API key" in missing.json()["detail"]
    assert wrong.status_code == 401
    assert wrong.json() == {"error": "unauthorized", "detail": "invalid or revoked API key"}
    assert wrong_write.status_code == 401
    assert (await anonymous.get("/health")).status_code == 200


async def test_a_body_over_the_limit_is_refused_with_413(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    definition = example(HUBSPOT)
    definition["description"] = "x" * (settings.max_body_bytes + 1)

    response = await api.post("/v1/journeys", json=definition)
    template = await api.put("/v1/templates/email/big", json={"subject": "s", "html": "x" * 70_000})

    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert template.status_code == 413
    assert (await api.get(f"/v1/journeys/{HUBSPOT}")).status_code == 404
    assert (await api.get("/v1/templates/email/big")).status_code == 404


# --- drafts --------------------------------------------------------------------------------


async def test_create_a_draft_then_read_it(api: httpx.AsyncClient) -> None:
    created = ok(await api.post("/v1/journeys", json=example(HUBSPOT)), 201)
    again = await api.post("/v1/journeys", json={"key": HUBSPOT, "name": "another"})
    read = ok(await api.get(f"/v1/journeys/{HUBSPOT}"))

    assert created["status"] == "draft"
    assert created["draft"] == example(HUBSPOT)
    assert (created["versions"], created["live"], created["live_version"]) == ([], None, None)
    assert read == created
    assert again.status_code == 409
    assert again.json() == {"error": "conflict", "detail": f"journey {HUBSPOT!r} already exists"}
    assert ok(await api.get(f"/v1/journeys/{HUBSPOT}"))["name"] == example(HUBSPOT)["name"]


async def test_a_draft_may_be_incomplete_but_needs_a_key_and_a_name(
    api: httpx.AsyncClient,
) -> None:
    incomplete = await api.post("/v1/journeys", json={"key": "wip", "name": "Work in progress"})
    bad_key = await api.post("/v1/journeys", json={"key": "Bad Key", "name": "x"})
    no_name = await api.post("/v1/journeys", json={"key": "nameless"})
    not_an_object = await api.post("/v1/journeys", json=["key", "name"])

    assert incomplete.status_code == 201, incomplete.text
    assert bad_key.json()["error"] == "invalid_request"
    assert list(problems(bad_key)) == ["body.key"]
    assert list(problems(no_name)) == ["body.name"]
    assert not_an_object.status_code == 422
    assert (await api.get("/v1/journeys/nameless")).status_code == 404


async def test_replace_a_draft(api: httpx.AsyncClient) -> None:
    ok(await api.post("/v1/journeys", json={"key": "wip", "name": "Work in progress"}), 201)
    draft = {**example(HUBSPOT), "key": "wip", "name": "Now complete"}

    replaced = ok(await api.put("/v1/journeys/wip/draft", json=draft))
    other_key = await api.put("/v1/journeys/wip/draft", json={**draft, "key": "other"})
    unknown = await api.put("/v1/journeys/nope/draft", json={**draft, "key": "nope"})

    assert (replaced["name"], replaced["draft"]) == ("Now complete", draft)
    assert problems(other_key) == {"body.key": "is 'other', expected 'wip'"}
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "not_found", "detail": "no journey 'nope'"}
    assert ok(await api.get("/v1/journeys/wip"))["draft"] == draft
    assert (await api.get("/v1/journeys/other")).status_code == 404


# --- validation and publishing ----------------------------------------------------------------


async def test_validate_reports_every_problem_then_passes(api: httpx.AsyncClient) -> None:
    broken = example(HUBSPOT)
    broken["steps"]["wait_2d"]["next"] = "case_studdy"  # unknown target + unreachable step
    broken["steps"]["intro"]["nxet"] = "wait_2d"  # unknown key
    ok(await api.post("/v1/journeys", json=broken), 201)

    shape = await api.post(f"/v1/journeys/{HUBSPOT}/validate")
    del broken["steps"]["intro"]["nxet"]
    ok(await api.put(f"/v1/journeys/{HUBSPOT}/draft", json=broken))
    graph = await api.post(f"/v1/journeys/{HUBSPOT}/validate")
    ok(await api.put(f"/v1/journeys/{HUBSPOT}/draft", json=example(HUBSPOT)))
    content = await api.post(f"/v1/journeys/{HUBSPOT}/validate")
    await put_templates(api, *HUBSPOT_TEMPLATES)
    valid = await api.post(f"/v1/journeys/{HUBSPOT}/validate")
    unknown = await api.post("/v1/journeys/nope/validate")

    assert shape.json()["error"] == "invalid"
    assert problems(shape) == {"steps.intro.nxet": "Extra inputs are not permitted"}
    # Graph problems and missing templates come together: every problem at once.
    assert problems(graph) == {
        "steps.wait_2d.next": 'unknown step "case_studdy"',
        "steps.case_study": 'unreachable from the start step "intro"',
        "steps.wait_3d": 'unreachable from the start step "intro"',
        "steps.offer": 'unreachable from the start step "intro"',
        "steps.intro.template": "no email template 'nurture-intro'",
        "steps.case_study.template": "no email template 'nurture-case-study'",
        "steps.offer.template": "no email template 'nurture-offer'",
    }
    assert len(problems(content)) == 3
    assert content.json()["message"] == "content is not ready: create the missing templates first"
    assert ok(valid) == {"valid": True}
    assert unknown.status_code == 404
    assert ok(await api.get(f"/v1/journeys/{HUBSPOT}"))["status"] == "draft"  # nothing published


async def test_publish_is_refused_until_the_templates_exist(api: httpx.AsyncClient) -> None:
    ok(await api.post("/v1/journeys", json=example(HUBSPOT)), 201)

    refused = await api.post(f"/v1/journeys/{HUBSPOT}/publish")
    after_refusal = ok(await api.get(f"/v1/journeys/{HUBSPOT}"))
    await put_templates(api, *HUBSPOT_TEMPLATES)
    published = ok(await api.post(f"/v1/journeys/{HUBSPOT}/publish"), 201)
    unknown = await api.post("/v1/journeys/nope/publish")

    assert problems(refused) == {
        "steps.intro.template": "no email template 'nurture-intro'",
        "steps.case_study.template": "no email template 'nurture-case-study'",
        "steps.offer.template": "no email template 'nurture-offer'",
    }
    assert (after_refusal["status"], after_refusal["versions"]) == ("draft", [])
    assert (published["journey_key"], published["version"]) == (HUBSPOT, 1)
    assert published["definition"]["steps"]["wait_2d"]["duration"] == "2d"
    assert unknown.status_code == 404


async def test_versions_increment_and_old_versions_stay_unchanged(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    first = await create_published(api, HUBSPOT)
    changed = example(HUBSPOT)
    changed["steps"]["wait_2d"]["duration"] = "4d"
    ok(await api.put(f"/v1/journeys/{HUBSPOT}/draft", json=changed))
    draft_only = ok(await api.get(f"/v1/journeys/{HUBSPOT}"))
    second = ok(await api.post(f"/v1/journeys/{HUBSPOT}/publish"), 201)
    journey = ok(await api.get(f"/v1/journeys/{HUBSPOT}"))

    assert draft_only["live"] == first  # saving a draft changes no version
    assert (first["version"], second["version"]) == (1, 2)
    assert [v["version"] for v in journey["versions"]] == [1, 2]
    assert journey["versions"][0]["published_at"] == first["published_at"]
    assert journey["live"] == second
    assert journey["live_version"] == 2
    assert journey["live"]["definition"]["steps"]["wait_2d"]["duration"] == "4d"
    assert (journey["status"], journey["trigger_type"]) == ("active", "api")
    async with sessions() as session:
        stored = await session.scalar(
            select(JourneyVersion).where(col(JourneyVersion.version) == 1)
        )
    assert stored is not None
    assert stored.definition == first["definition"]
    assert stored.definition["steps"]["wait_2d"]["duration"] == "2d"


async def test_list_journeys_filtered_and_paginated(api: httpx.AsyncClient) -> None:
    for key in ("c-draft", "a-draft"):
        ok(await api.post("/v1/journeys", json={"key": key, "name": key}), 201)
    await create_published(api, HUBSPOT)

    everything = ok(await api.get("/v1/journeys"))
    drafts = ok(await api.get("/v1/journeys", params={"status": "draft"}))
    active = ok(await api.get("/v1/journeys", params={"status": "active"}))
    second_page = ok(await api.get("/v1/journeys", params={"limit": 1, "offset": 1}))
    bad_status = await api.get("/v1/journeys", params={"status": "running"})
    bad_limit = await api.get("/v1/journeys", params={"limit": 0})

    assert [j["key"] for j in everything["items"]] == ["a-draft", "c-draft", HUBSPOT]
    assert [j["key"] for j in drafts["items"]] == ["a-draft", "c-draft"]
    assert [(j["key"], j["live_version"]) for j in active["items"]] == [(HUBSPOT, 1)]
    assert [j["key"] for j in second_page["items"]] == ["c-draft"]
    assert (second_page["limit"], second_page["offset"]) == (1, 1)
    assert list(problems(bad_status)) == ["query.status"]
    assert list(problems(bad_limit)) == ["query.limit"]


# --- pause, resume, archive ---------------------------------------------------------------------


async def test_status_changes_and_what_they_refuse(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.post("/v1/journeys", json={"key": "wip", "name": "wip"}), 201)
    await create_published(api, HUBSPOT)
    contact_id = await make_contact(sessions)
    base = f"/v1/journeys/{HUBSPOT}"

    pause_draft = await api.post("/v1/journeys/wip/pause")
    paused = ok(await api.post(f"{base}/pause"))
    paused_again = ok(await api.post(f"{base}/pause"))
    archive_paused = await api.post(f"{base}/archive")
    resumed = ok(await api.post(f"{base}/resume"))
    archived = ok(await api.post(f"{base}/archive"))
    archived_again = ok(await api.post(f"{base}/archive"))
    after = {
        "enroll": await api.post(
            "/v1/enrollments", json={"journey_key": HUBSPOT, "contact_id": str(contact_id)}
        ),
        "draft": await api.put(f"{base}/draft", json=example(HUBSPOT)),
        "publish": await api.post(f"{base}/publish"),
        "pause": await api.post(f"{base}/pause"),
        "resume": await api.post(f"{base}/resume"),
    }
    unknown = [await api.post(f"/v1/journeys/nope/{action}") for action in ("pause", "archive")]

    assert pause_draft.status_code == 409
    assert pause_draft.json()["error"] == "conflict"
    assert paused == {"key": HUBSPOT, "status": "paused", "enrollments_signalled": 0}
    assert paused_again["status"] == "paused"
    assert archive_paused.status_code == 409
    assert "resume it first" in archive_paused.json()["detail"]
    assert resumed["status"] == "active"
    assert archived == archived_again == {
        "key": HUBSPOT, "status": "archived", "enrollments_signalled": 0,
    }  # fmt: skip
    assert {name: r.status_code for name, r in after.items()} == dict.fromkeys(after, 409)
    assert [r.status_code for r in unknown] == [404, 404]
    assert ok(await api.get(f"{base}"))["status"] == "archived"


@pytest.mark.usefixtures("worker")
async def test_pause_holds_an_enrolled_contact_before_its_next_send_and_resume_releases_it(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    await create_published(api, HUBSPOT)
    contact_id = await make_contact(sessions)
    enrollment, handle = await start(sessions, client, task_queue, HUBSPOT, contact_id)
    await reach_step(handle, "wait_2d")

    paused = ok(await api.post(f"/v1/journeys/{HUBSPOT}/pause"))
    await env.sleep(timedelta(days=3))  # wait_2d is over: case_study is due
    await reach_step(handle, "case_study")
    for _ in range(10):  # unpaused, the send would finish within moments
        held = await progress(handle)
        assert (held.current_step, held.status) == ("case_study", "paused")
        await asyncio.sleep(0.05)
    sent_while_paused = await sent_templates(sessions, contact_id)
    resumed = ok(await api.post(f"/v1/journeys/{HUBSPOT}/resume"))
    result = await finish(env, handle)

    assert paused["enrollments_signalled"] == 1
    assert resumed["enrollments_signalled"] == 1
    assert sent_while_paused == ["nurture-intro"]
    assert result.status == "completed"
    assert await sent_templates(sessions, contact_id) == [
        "nurture-intro", "nurture-case-study", "nurture-offer",
    ]  # fmt: skip
    async with sessions() as session:
        case_study = await session.scalar(
            select(EnrollmentStep).where(
                col(EnrollmentStep.enrollment_id) == enrollment.id,
                col(EnrollmentStep.step_id) == "case_study",
            )
        )
    # Held from day 2 until resumed after day 3 (workflow time).
    assert case_study is not None and case_study.left_at is not None
    assert case_study.left_at - case_study.entered_at >= timedelta(hours=20)


@pytest.mark.usefixtures("worker")
async def test_archive_lets_enrolled_contacts_finish(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    await create_published(api, HUBSPOT)
    contact_id = await make_contact(sessions)
    _, handle = await start(sessions, client, task_queue, HUBSPOT, contact_id)
    await reach_step(handle, "wait_2d")

    ok(await api.post(f"/v1/journeys/{HUBSPOT}/archive"))
    newcomer = await api.post(
        "/v1/enrollments",
        json={"journey_key": HUBSPOT, "contact_id": str(await make_contact(sessions))},
    )
    result = await finish(env, handle)

    assert newcomer.status_code == 409
    assert result.status == "completed"
    assert len(await sent_templates(sessions, contact_id)) == 3


# --- templates ----------------------------------------------------------------------------------


async def test_templates_create_replace_read_list(api: httpx.AsyncClient) -> None:
    email = {"subject": "Welcome", "html": "<p>Hi</p>", "text": "Hi"}
    created = ok(await api.put("/v1/templates/email/welcome", json=email))
    replaced = ok(
        await api.put("/v1/templates/email/welcome", json={"subject": "Hello", "text": "Hey"})
    )
    sms = ok(await api.put("/v1/templates/sms/welcome", json={"text": "Hi!"}))
    read = ok(await api.get("/v1/templates/email/welcome"))
    listed = ok(await api.get("/v1/templates"))
    only_sms = ok(await api.get("/v1/templates", params={"channel": "sms"}))

    assert (created["channel"], created["key"], created["html"]) == (
        "email",
        "welcome",
        "<p>Hi</p>",
    )
    assert (replaced["subject"], replaced["html"], replaced["text"]) == ("Hello", None, "Hey")
    assert replaced["created_at"] == created["created_at"]
    assert read == replaced
    assert (sms["channel"], sms["subject"], sms["text"]) == ("sms", None, "Hi!")
    assert [(t["channel"], t["key"]) for t in listed["items"]] == [
        ("email", "welcome"), ("sms", "welcome"),
    ]  # fmt: skip
    assert "html" not in listed["items"][0]
    assert [t["channel"] for t in only_sms["items"]] == ["sms"]


async def test_template_errors(api: httpx.AsyncClient) -> None:
    empty_email = await api.put("/v1/templates/email/x", json={})
    sms_with_subject = await api.put("/v1/templates/sms/x", json={"subject": "s", "text": "t"})
    unknown_channel = await api.put("/v1/templates/fax/x", json={"text": "t"})
    unknown_key = await api.put("/v1/templates/sms/x", json={"text": "t", "body": "?"})
    missing = await api.get("/v1/templates/email/nope")

    assert empty_email.json()["error"] == "invalid"
    assert problems(empty_email) == {
        "body.subject": "an email needs a subject",
        "body": "an email needs html or text (or both)",
    }
    assert problems(sms_with_subject) == {"body.subject": "an SMS has no subject"}
    assert list(problems(unknown_channel)) == ["path.channel"]
    assert list(problems(unknown_key)) == ["body.body"]
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "detail": "no email template 'nope'"}
    assert ok(await api.get("/v1/templates"))["items"] == []


async def test_openapi_documents_the_routes(api: httpx.AsyncClient) -> None:
    spec = ok(await api.get("/openapi.json"))
    create = spec["paths"]["/v1/journeys"]["post"]
    upsert = spec["paths"]["/v1/contacts/{ref}"]["put"]

    assert create["tags"] == ["journeys"]
    assert {"201", "401", "409", "413", "422"} <= set(create["responses"])
    assert create["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorOut"
    }
    assert spec["components"]["schemas"]["JourneyDraftIn"]["examples"][0]["key"]
    assert {"200", "201"} <= set(upsert["responses"])
    for path in ("/v1/templates/{channel}/{key}", "/v1/lists/{key}/members"):
        for operation in spec["paths"][path].values():
            assert operation["summary"] and operation["responses"]
