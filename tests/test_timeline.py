"""A contact's timeline (`GET /v1/contacts/{ref}/timeline`): what happened and why, in words,
newest first and paged. The journey cases run the real worker on the time-skipping server;
the wording and paging cases also write rows directly, as the writers leave them."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.audience.timeline import Cursor, Row, change_phrases, encode_cursor, word
from nurture.contracts import EnrollmentResult
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    ContactChangeRecord,
    Enrollment,
    Event,
    Journey,
    Message,
    TimelineNote,
    utcnow,
)
from nurture.journeys.publishing import latest_version
from tests.support import (
    all_enrollments_ended,
    enroll_awaiting_click,
    example,
    exits_at_once,
    finish,
    make_contact,
    make_lists,
    ok,
    publish_journey,
    reach_step,
)

HUBSPOT = "hubspot-nurture-goal"
CUSTOMERS = {
    "name": "Customers",
    "filter": {"type": "field", "field": "fields.lifecycle", "op": "eq", "value": "customer"},
}


async def timeline(api: httpx.AsyncClient, ref: str, **params: Any) -> list[dict[str, Any]]:
    body = ok(await api.get(f"/v1/contacts/{ref}/timeline", params=params))
    items: list[dict[str, Any]] = body["items"]
    ats = [item["at"] for item in items]
    assert ats == sorted(ats, reverse=True), "newest first"
    return items


def summaries(items: list[dict[str, Any]], *kinds: str) -> list[str]:
    return [item["summary"] for item in items if item["kind"] in kinds]


def _two_emails(key: str, **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "name": key,
        "start": "first",
        "steps": {
            "first": {"type": "send_email", "template": "first", "next": "wait"},
            "wait": {"type": "wait", "duration": "1d", "next": "second"},
            "second": {"type": "send_email", "template": "second"},
        },
        **extra,
    }


async def add(sessions: SessionFactory, *rows: Any) -> None:
    async with sessions.begin() as session:
        session.add_all(rows)


async def _ada_becomes_a_customer_during_the_wait(
    api: httpx.AsyncClient, client: Client, env: WorkflowEnvironment
) -> tuple[dict[str, Any], EnrollmentResult]:
    """Ada, a lead, enters journey promo; during its wait she becomes a customer. The
    enrollment as the API created it, and how it ended."""
    ada = {"email": "ada@example.com", "fields": {"lifecycle": "lead"}}
    ok(await api.put("/v1/contacts/ada", json=ada), 201)
    created = ok(
        await api.post("/v1/enrollments", json={"journey_key": "promo", "external_id": "ada"}),
        201,
    )
    handle = client.get_workflow_handle(created["workflow_id"], result_type=EnrollmentResult)
    await reach_step(handle, "wait")
    ok(await api.patch("/v1/contacts/ext:ada", json={"fields": {"lifecycle": "customer"}}))
    return created, await finish(env, handle)


# --- journeys: why Ada did not get the second email, why Bob did not enter -----------------------


@pytest.mark.usefixtures("worker")
async def test_ada_did_not_get_the_second_email_because_she_entered_the_exclusion_segment(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, env: WorkflowEnvironment
) -> None:
    ok(await api.put("/v1/segments/customers", json=CUSTOMERS), 201)
    await publish_journey(
        sessions, _two_emails("promo", name="Promo", entry={"exclusion_segment": "customers"})
    )
    created, result = await _ada_becomes_a_customer_during_the_wait(api, client, env)
    assert result.status == "completed"

    items = await timeline(api, "ext:ada")

    messages = [i for i in items if i["kind"] == "message"]
    assert [(m["summary"], m["journey"], m["step"], m["reason"]) for m in messages] == [
        (
            "Email 'second' (journey Promo, step second) not sent: the contact is in the "
            "journey's exclusion segment 'customers'",
            "promo",
            "second",
            "excluded",
        ),
        ("Sent email 'first' (journey Promo, step first)", "promo", "first", None),
    ]
    assert messages[0]["detail"]["status"] == "skipped"
    assert messages[0]["detail"]["reason"] == "in exclusion segment customers"
    assert summaries(items, "entered") == ["Entered journey Promo (v1) through the API"]
    assert summaries(items, "completed") == ["Completed journey Promo (v1)"]
    assert sorted(summaries(items, "step")) == [
        "Journey Promo, step first (send email): email sent",
        "Journey Promo, step second (send email): email not sent (see the message)",
        "Journey Promo, step wait (wait): waited",
    ]
    assert summaries(items, "change") == [
        "Field lifecycle changed from lead to customer (API)",
        "Contact created, email set to ada@example.com, field lifecycle set to lead (API)",
    ]
    entered = next(i for i in items if i["kind"] == "entered")
    assert entered["source"] == "api"
    assert entered["detail"]["enrollment_id"] == created["id"]

    only_messages = await timeline(api, "ext:ada", journey="promo", kinds="message")
    assert only_messages == messages
    assert await timeline(api, "ext:ada", journey="another") == []


@pytest.mark.usefixtures("worker")
async def test_a_goal_met_during_a_wait_leaves_the_wait_there_and_says_why(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, env: WorkflowEnvironment
) -> None:
    goal = {"criteria": {"type": "field", "field": "lifecycle", "op": "eq", "value": "customer"}}
    await publish_journey(sessions, _two_emails("promo", name="Promo", goal=goal))
    created, result = await _ada_becomes_a_customer_during_the_wait(api, client, env)
    assert result.reason == "goal_met"

    items = await timeline(api, "ext:ada")

    assert sorted(summaries(items, "step")) == [
        "Journey Promo, step first (send email): email sent",
        "Journey Promo, step wait (wait): left the journey here: met its goal",
    ]
    assert summaries(items, "exited") == ["Left journey Promo: met its goal"]
    path = ok(await api.get(f"/v1/enrollments/{created['id']}"))["path"]
    assert [(p["step"], p["outcome"], p["left_at"] is not None) for p in path] == [
        ("first", "sent", True),
        ("wait", "exited: goal_met", True),
    ]


@pytest.mark.usefixtures("worker")
async def test_bob_did_not_enter_because_he_already_met_the_goal(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client, env: WorkflowEnvironment
) -> None:
    await publish_journey(sessions, example(HUBSPOT))
    await make_contact(sessions, external_id="bob", fields={"lifecycle_stage": "customer"})
    created = ok(
        await api.post("/v1/enrollments", json={"journey_key": HUBSPOT, "external_id": "bob"}),
        201,
    )
    handle = client.get_workflow_handle(created["workflow_id"], result_type=EnrollmentResult)
    assert (await finish(env, handle)).reason == "goal_already_met"

    items = await timeline(api, "bob")

    assert [(i["kind"], i["summary"], i["reason"], i["journey"]) for i in items] == [
        (
            "not_entered",
            "Not entered in journey Lead nurturing until the lead becomes a customer: already "
            "met its goal (asked through the API)",
            "goal_already_met",
            HUBSPOT,
        )
    ]
    assert items[0]["detail"]["enrollment_id"] == created["id"]


@pytest.mark.usefixtures("worker")
async def test_a_second_entry_refused_by_the_journey_says_why(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await publish_journey(sessions, exits_at_once("once", {"type": "api"}, name="Once"))
    contact_id = await make_contact(sessions, external_id="cy")
    enroll = {"journey_key": "once", "external_id": "cy"}
    ok(await api.post("/v1/enrollments", json=enroll), 201)
    await all_enrollments_ended(sessions)

    refused = await api.post("/v1/enrollments", json=enroll)

    assert refused.status_code == 409, refused.text
    items = await timeline(api, f"id:{contact_id}")
    # (Workflow times run ahead on the time-skipping server: only compare within a kind.)
    not_entered = [i for i in items if i["kind"] == "not_entered"]
    assert [(i["kind"], i["summary"], i["reason"], i["source"]) for i in not_entered] == [
        (
            "not_entered",
            "Not entered in journey Once: they were already enrolled once and it allows no "
            "re-entry (asked through the API)",
            "reentry_never",
            "api",
        )
    ]
    assert summaries(items, "exited") == ["Left journey Once at exit step done (reason: done)"]
    assert summaries(items, "entered") == ["Entered journey Once (v1) through the API"]


async def test_every_reason_for_not_entering_is_worded(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await publish_journey(sessions, exits_at_once("promo", {"type": "api"}, name="Promo"))
    contact_id = await make_contact(sessions)
    start = utcnow()
    notes = [
        ("journey_not_live", "journey 'promo' is archived: nobody can enter it", "api"),
        ("no_published_version", "journey 'promo' has no published version", "api"),
        ("reentry_never", "... which allows no re-entry", "list_joined:newsletter"),
        ("max_entries", f"contact {contact_id} reached the 3 entries allowed", "event:purchase"),
        ("excluded", "contact x is in 'promo''s exclusion segment 'customers'", "api"),
        (
            "exclusion_segment_missing",
            "exclusion segment 'gone' does not exist: nobody enters 'promo' until it exists again",
            "api",
        ),
        ("already_enrolled", "contact x is still in 'promo'", "segment_entered:vips"),
        ("contact_missing", "no contact", "audience:list:newsletter"),
        ("brand_new_reason", "a rule from the future said no", None),
    ]
    await add(
        sessions,
        *[
            TimelineNote(
                contact_id=contact_id,
                at=start - timedelta(seconds=n),
                kind="not_entered",
                journey_key="promo",
                reason=reason,
                detail=detail,
                source=source,
            )
            for n, (reason, detail, source) in enumerate(notes)
        ],
        TimelineNote(
            contact_id=contact_id,
            at=start - timedelta(minutes=1),
            kind="capped",
            journey_key="promo",
            reason="frequency_cap",
            detail="3 emails this week already",
        ),
    )

    items = await timeline(api, str(contact_id))

    not_entered = "Not entered in journey Promo: "
    assert [(i["summary"], i["reason"]) for i in items] == [
        (
            not_entered + "the journey is archived (asked through the API)",
            "journey_not_live",
        ),
        (
            not_entered + "the journey has no published version (asked through the API)",
            "no_published_version",
        ),
        (
            not_entered + "they were already enrolled once and it allows no re-entry (when they "
            "joined list newsletter)",
            "reentry_never",
        ),
        (
            not_entered + "they already entered it the 3 times allowed (on event purchase)",
            "max_entries",
        ),
        (
            not_entered + "they are in its exclusion segment 'customers' (asked through the API)",
            "excluded",
        ),
        (
            not_entered + "its exclusion segment 'gone' no longer exists, so nobody can enter it "
            "(asked through the API)",
            "exclusion_segment_missing",
        ),
        (
            not_entered + "they were still in it from an earlier entry (when they entered segment "
            "vips)",
            "already_enrolled",
        ),
        (
            not_entered + "the contact no longer existed (in a bulk enrollment of list newsletter)",
            "contact_missing",
        ),
        (not_entered + "a rule from the future said no", "brand_new_reason"),
        ("Capped: 3 emails this week already (journey Promo)", "frequency_cap"),
    ]
    assert {i["kind"] for i in items} == {"not_entered", "capped"}
    assert items[0]["detail"]["detail"] == notes[0][1]


async def test_every_way_of_leaving_a_journey_is_worded(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await publish_journey(sessions, exits_at_once("promo", {"type": "api"}, name="Promo"))
    contact_id = await make_contact(sessions)
    start = utcnow() - timedelta(hours=1)
    ends = [
        ("exited", "goal_met", None, "api"),
        ("exited", "contact_deleted", None, "list_joined:newsletter"),
        ("exited", "unenrolled", None, "segment_entered:vips"),
        ("exited", "moved_to_crm", None, "event:purchase"),
        ("failed", None, "template 'x' cannot be rendered", "audience:segment:vips"),
        ("not_enrolled", "contact_deleted", None, None),
        ("completed", None, None, "bulk:newsletter"),
    ]
    async with sessions.begin() as session:
        journey = await session.scalar(select(Journey).where(col(Journey.key) == "promo"))
        assert journey is not None
        version = await latest_version(session, journey)
        assert version is not None
        for n, (status, reason, detail, cause) in enumerate(ends):
            session.add(
                Enrollment(
                    journey_id=journey.id,
                    journey_version_id=version.id,
                    version=version.version,
                    contact_id=contact_id,
                    workflow_id=f"test-{uuid.uuid4()}",
                    status=status,
                    exit_reason=reason,
                    detail=detail,
                    entered_by=cause,
                    enrolled_at=start - timedelta(minutes=n, seconds=1),
                    ended_at=start - timedelta(minutes=n),
                )
            )

    items = await timeline(
        api, str(contact_id), kinds="entered,exited,completed,failed,not_entered"
    )

    assert [(i["kind"], i["summary"]) for i in items] == [
        ("exited", "Left journey Promo: met its goal"),
        ("entered", "Entered journey Promo (v1) through the API"),
        ("exited", "Left journey Promo: the contact was deleted"),
        ("entered", "Entered journey Promo (v1) because they joined list newsletter"),
        ("exited", "Left journey Promo: they were unenrolled"),
        ("entered", "Entered journey Promo (v1) because they entered segment vips"),
        ("exited", "Left journey Promo: moved_to_crm"),
        ("entered", "Entered journey Promo (v1) because of event purchase"),
        (
            "failed",
            "Journey Promo failed for this contact: template 'x' cannot be rendered",
        ),
        ("entered", "Entered journey Promo (v1) in a bulk enrollment of segment vips"),
        ("not_entered", "Not entered in journey Promo: the contact no longer existed"),
        ("completed", "Completed journey Promo (v1)"),
        ("entered", "Entered journey Promo (v1) in a bulk enrollment of newsletter"),
    ]
    assert [i["reason"] for i in items if i["kind"] == "exited"] == [
        "goal_met",
        "contact_deleted",
        "unenrolled",
        "moved_to_crm",
    ]


# --- changes: from a journey step, the API, an import --------------------------------------------


@pytest.mark.usefixtures("worker")
async def test_changes_say_what_changed_and_who_changed_it(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await make_lists(sessions, "customers", "newsletter")
    news = {"type": "list_joined", "list": "newsletter"}
    await publish_journey(sessions, exits_at_once("news", news, name="News"))
    await publish_journey(
        sessions,
        {
            "key": "buy",
            "name": "Buyers",
            "start": "set_customer",
            "steps": {
                "set_customer": {
                    "type": "update_contact",
                    "set": {"lifecycle_stage": "customer"},
                    "add_tags": ["buyer"],
                    "next": "join",
                },
                "join": {"type": "add_to_list", "list": "customers"},
            },
        },
    )
    contact = ok(
        await api.put("/v1/contacts/dee", json={"fields": {"lifecycle_stage": "lead"}}), 201
    )
    ok(await api.post("/v1/lists/newsletter/members", json={"contact_ids": [contact["id"]]}))
    ok(await api.post("/v1/enrollments", json={"journey_key": "buy", "external_id": "dee"}), 201)
    await all_enrollments_ended(sessions)
    imported = ok(
        await api.post(
            "/v1/contacts/import",
            content=b"external_id,plan,tags,time_zone\ndee,pro,vip,Europe/Warsaw\n",
            headers={"Content-Type": "text/csv"},
        )
    )
    old = utcnow() - timedelta(days=1)
    await add(
        sessions,
        ContactChangeRecord(  # a writer newer than this reader
            contact_id=contact["id"],
            at=old,
            source="webhook:sendgrid",
            changes={"suppressed": {"channel": "email", "reason": "bounced"}, "mood": "sunny"},
        ),
        ContactChangeRecord(  # a custom event: shown once, as the event
            contact_id=contact["id"],
            at=old - timedelta(seconds=1),
            source="api",
            changes={"event": {"name": "purchase", "properties": {}}},
        ),
    )

    items = await timeline(api, "dee", kinds="change")

    import_id = imported["id"]
    assert [(i["summary"], i["journey"], i["step"], i["source"]) for i in items] == [
        (
            f"Imported (import {import_id[:8]}…): time_zone = Europe/Warsaw, plan = pro, "
            "tag vip added",
            None,
            None,
            f"import:{import_id}",
        ),
        ("Joined list customers by journey buy, step join", "buy", "join", "journey:buy:join"),
        (
            "Field lifecycle_stage changed from lead to customer, tag buyer added by journey "
            "buy, step set_customer",
            "buy",
            "set_customer",
            "journey:buy:set_customer",
        ),
        ("Joined list newsletter (API)", None, None, "api"),
        ("Contact created, field lifecycle_stage set to lead (API)", None, None, "api"),
        (
            "Suppressed on email: the address bounced, mood: sunny (sendgrid webhook)",
            None,
            None,
            "webhook:sendgrid",
        ),
    ]
    assert items[2]["detail"]["changes"] == {
        "fields": {"lifecycle_stage": ["lead", "customer"]},
        "tags_added": ["buyer"],
    }
    by_journey = await timeline(api, "dee", journey="buy", kinds="change,entered")
    assert [i["kind"] for i in by_journey] == ["change", "change", "entered"]
    news_entry = await timeline(api, "dee", journey="news", kinds="entered")
    assert summaries(news_entry, "entered") == [
        "Entered journey News (v1) because they joined list newsletter"
    ]


def _row(kind: str, payload: dict[str, Any], **columns: Any) -> Row:
    values: dict[str, Any] = {
        "source_name": "changes",
        "rank": 10,
        "at": utcnow(),
        "id": "1",
        "kind": kind,
        "journey": None,
        "step": None,
        "reason": None,
        "source": None,
        "payload": payload,
        **columns,
    }
    return Row(**values)


def test_change_wording_covers_every_key_and_survives_odd_values() -> None:
    assert change_phrases(
        {
            "created": True,
            "attributes": {"email": [None, "a@example.com"], "phone": ["+481", None]},
            "fields": {"plan": ["free", "pro"], "score": [None, 3], "old": [True, None]},
            "tags_removed": ["a", "b"],
            "lists_left": ["newsletter"],
            "consent": {"email": [None, "granted"], "sms": ["granted", "revoked"]},
            "attributes_set": {"phone": "+48601"},
            "consent_set": {"sms": "granted"},
            "zzz": {"nested": [1, 2]},
        }
    ) == [
        "contact created",
        "email set to a@example.com",
        "phone removed (was +481)",
        "phone = +48601",
        "field plan changed from free to pro",
        "field score set to 3",
        "field old removed (was true)",
        "tags a, b removed",
        "left list newsletter",
        "email consent granted",
        "SMS consent revoked",
        "SMS consent granted",
        'zzz: {"nested": [1, 2]}',
    ]
    odd = word(_row("change", {"changes": {"fields": "not a mapping", "consent": 3}}, source="x"))
    assert odd.summary == "Not a mapping, 3 (x)"
    broken = word(_row("change", {"changes": None}, source_name="no-such-source"))
    assert broken.summary == "Change"


# --- events: opens, clicks, custom ---------------------------------------------------------------


@pytest.mark.usefixtures("worker")
async def test_opens_clicks_and_custom_events(
    api: httpx.AsyncClient, sessions: SessionFactory, client: Client
) -> None:
    waiting = await enroll_awaiting_click(api, sessions, client)
    message = f"/v1/messages/{waiting.message_id}/engagements"
    ok(await api.post(message, json={"kind": "open"}), 202)
    ok(await api.post(message, json={"kind": "click", "link": "purchase"}), 202)
    await add(
        sessions,
        Event(
            dedupe_key=f"machine-{uuid.uuid4()}",
            contact_id=waiting.contact_id,
            kind="open",
            message_id=waiting.message_id,
            machine=True,
            occurred_at=utcnow() - timedelta(hours=1),
        ),
    )
    properties = {"total": 129.0, "currency": "EUR"}
    event = {"contact_id": str(waiting.contact_id), "name": "purchase", "properties": properties}
    ok(await api.post("/v1/events", json=event), 202)

    items = await timeline(api, f"id:{waiting.contact_id}")

    journey = "Welcome new subscribers, find the buyers"
    email = f"email 'welcome' (journey {journey}, step welcome)"
    assert [
        (i["kind"], i["summary"]) for i in items if i["kind"] in ("open", "click", "event")
    ] == [
        ("event", "Event purchase (total = 129.0, currency = EUR)"),
        ("click", f"Clicked link 'purchase' in {email}"),
        ("open", f"Opened {email}"),
        (
            "open",
            f"Email 'welcome' (journey {journey}, step welcome) opened automatically (a mail "
            "privacy proxy or scanner, not the person)",
        ),
    ]
    click = next(i for i in items if i["kind"] == "click")
    assert (click["journey"], click["step"]) == ("benchmark-welcome", "welcome")
    assert click["detail"]["message_id"] == str(waiting.message_id)
    custom = next(i for i in items if i["kind"] == "event")
    assert custom["detail"]["properties"] == properties
    assert all("event" not in (i["detail"].get("changes") or {}) for i in items)


# --- paging, errors -------------------------------------------------------------------------------


async def test_pages_follow_each_other_without_duplicates_or_gaps(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    contact_id = await make_contact(sessions)
    now = utcnow().replace(microsecond=0)
    same = now - timedelta(minutes=5)  # many entries at one instant: ties broken by rank, id
    rows: list[Any] = []
    for n in range(6):
        rows.append(
            TimelineNote(
                contact_id=contact_id,
                at=same if n % 2 else now - timedelta(seconds=n),
                kind="not_entered",
                journey_key="promo",
                reason="reentry_never",
            )
        )
        rows.append(
            ContactChangeRecord(
                contact_id=contact_id,
                at=same,
                source="api",
                changes={"tags_added": [f"t{n}"]},
            )
        )
        rows.append(
            Message(
                idempotency_key=f"paging-{uuid.uuid4()}",
                contact_id=contact_id,
                channel="email",
                template=f"m{n}",
                status="sent",
                created_at=same if n < 4 else now - timedelta(hours=n),
            )
        )
        rows.append(
            Event(
                dedupe_key=f"paging-{uuid.uuid4()}",
                contact_id=contact_id,
                kind="custom",
                name=f"e{n}",
                occurred_at=same,
            )
        )
    await add(sessions, *rows)

    everything = await timeline(api, str(contact_id), limit=200)
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 5, **({"before": cursor} if cursor else {})}
        body = ok(await api.get(f"/v1/contacts/{contact_id}/timeline", params=params))
        pages.append(body["items"])
        cursor = body["next"]
        if cursor is None:
            break

    assert len(everything) == 24
    assert [len(page) for page in pages] == [5, 5, 5, 5, 4]
    assert [item for page in pages for item in page] == everything
    # 19 entries at one instant, across page boundaries: event, message, note, change
    tied = [i["kind"] for i in everything if i["at"].startswith(same.isoformat()[:19])]
    assert len(tied) == 19
    assert tied == sorted(tied, key=["event", "message", "not_entered", "change"].index)
    assert len({(i["kind"], str(sorted(i["detail"].items()))) for i in everything}) == 24


async def test_unknown_contact_bad_cursor_and_unknown_kind(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    contact_id = await make_contact(sessions, external_id="eve")

    assert (await api.get("/v1/contacts/ext:nobody/timeline")).status_code == 404
    assert (await api.get(f"/v1/contacts/id:{uuid.uuid4()}/timeline")).status_code == 404
    for bad in ("not-a-cursor", "bm9wZQ", encode_cursor(Cursor(utcnow(), 1, "x"))[:-3] + "!!"):
        refused = await api.get("/v1/contacts/eve/timeline", params={"before": bad})
        assert refused.status_code == 422, refused.text
        assert "cursor" in refused.json()["message"]
    unknown_kind = await api.get("/v1/contacts/eve/timeline", params={"kinds": "message,gossip"})
    assert unknown_kind.status_code == 422
    assert "unknown kind(s) gossip" in unknown_kind.json()["message"]
    too_many = await api.get("/v1/contacts/eve/timeline", params={"limit": 201})
    assert too_many.status_code == 422
    empty = ok(await api.get(f"/v1/contacts/{contact_id}/timeline"))
    assert empty == {"items": [], "next": None}
