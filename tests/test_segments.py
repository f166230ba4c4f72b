"""Segments: each filter kind selects exactly the right contacts (real Postgres), bad filters
are refused with a path, and the count / preview endpoints."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from nurture.audience.segments import service
from nurture.audience.segments.compiler import compile_filter
from nurture.audience.segments.definition import FILTER
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    Contact,
    ContactList,
    Enrollment,
    Event,
    Journey,
    JourneyVersion,
    ListMembership,
    Message,
    Suppression,
    utcnow,
)
from nurture.errors import Invalid
from tests.support import make_lists, ok, problems

Population = dict[str, uuid.UUID]


async def populate(sessions: SessionFactory) -> Population:
    """Four contacts with different fields, tags, lists, events, enrollments, suppressions."""
    now = utcnow()
    await make_lists(sessions, "newsletter", "vip-list")
    people = {
        "ada": Contact(
            email="ada@example.com",
            fields={
                "plan": "pro",
                "age": 42,
                "score": "17",
                "signup": "2026-01-15",
                "interests": ["Golf", "tennis"],
            },
            tags=["vip", "beta"],
            consent={"email": "granted"},
        ),
        "bob": Contact(
            email="bob@test.org",
            fields={"plan": "free", "age": "30", "signup": "2025-06-01T10:00:00+02:00"},
            tags=["beta"],
            consent={"email": "revoked"},
        ),
        "cyd": Contact(
            external_id="crm-3",
            phone="+48601234567",
            fields={"plan": "PRO", "age": 7, "signup": "2024-02-30"},  # not a real date
        ),
        "dee": Contact(email="dee@example.com", tags=["VIP"]),
    }
    async with sessions.begin() as session:
        session.add_all(people.values())
        await session.flush()
        ids = {name: contact.id for name, contact in people.items()}
        lists = {row.key: row.id for row in await session.scalars(select(ContactList))}
        session.add(ListMembership(list_id=lists["newsletter"], contact_id=ids["ada"]))
        session.add(ListMembership(list_id=lists["vip-list"], contact_id=ids["cyd"]))

        journey = Journey(key="onboarding", name="Onboarding")
        session.add(journey)
        await session.flush()
        version = JourneyVersion(journey_id=journey.id, version=1, definition={})
        session.add(version)
        await session.flush()
        enrollments = {}
        for name, status, reason in (
            ("ada", "exited", "goal_met"),
            ("bob", "active", None),
        ):
            enrollment = Enrollment(
                journey_id=journey.id,
                journey_version_id=version.id,
                version=1,
                contact_id=ids[name],
                workflow_id=f"wf-{name}",
                status=status,
                exit_reason=reason,
            )
            session.add(enrollment)
            enrollments[name] = enrollment
        await session.flush()

        messages = {}
        for name, template, enrollment_id in (
            ("ada", "welcome", enrollments["ada"].id),
            ("bob", "welcome", enrollments["bob"].id),
            ("cyd", "promo", None),
        ):
            message = Message(
                idempotency_key=f"m-{name}",
                enrollment_id=enrollment_id,
                contact_id=ids[name],
                channel="email",
                template=template,
                status="sent",
            )
            session.add(message)
            messages[name] = message
        await session.flush()

        def event(who: str, kind: str, days_ago: float, **values: Any) -> None:
            session.add(
                Event(
                    dedupe_key=str(uuid.uuid4()),
                    contact_id=ids[who],
                    kind=kind,
                    occurred_at=now - timedelta(days=days_ago),
                    **values,
                )
            )

        for days in (1, 3, 10):
            event("ada", "custom", days, name="purchase", properties={"sku": "a"})
        event("bob", "custom", 5, name="purchase", properties={"sku": "b"})
        event("bob", "custom", 60, name="purchase")
        event("bob", "custom", 61, name="purchase")
        event("ada", "open", 2, message_id=messages["ada"].id)
        event("ada", "open", 2.5, message_id=messages["ada"].id)  # the same email twice
        event("bob", "open", 2, message_id=messages["bob"].id, machine=True)
        event("cyd", "click", 40, message_id=messages["cyd"].id, link="offer")
        session.add(
            Suppression(contact_id=ids["bob"], channel="email", reason="unsubscribed", source="api")
        )
    return ids


async def members(sessions: SessionFactory, ids: Population, filter: dict[str, Any]) -> set[str]:
    names = {contact_id: name for name, contact_id in ids.items()}
    async with sessions() as session:
        found = await session.scalars(service.members_query(FILTER.validate_python(filter)))
        return {names[contact_id] for contact_id in found}


def field(name: str, op: str, value: Any = None) -> dict[str, Any]:
    condition = {"type": "field", "field": name, "op": op}
    return condition if value is None else {**condition, "value": value}


CASES: list[tuple[str, dict[str, Any], set[str]]] = [
    # built-in fields; strings ignore case, like journey conditions
    ("email contains", field("email", "contains", "EXAMPLE.com"), {"ada", "dee"}),
    ("email eq", field("email", "eq", "Ada@Example.com"), {"ada"}),
    ("email ne, missing counts", field("email", "ne", "ada@example.com"), {"bob", "cyd", "dee"}),
    ("email exists", field("email", "exists"), {"ada", "bob", "dee"}),
    ("email not_exists", field("email", "not_exists"), {"cyd"}),
    ("email in", field("email", "in", ["bob@test.org", "DEE@example.com"]), {"bob", "dee"}),
    ("phone starts_with", field("phone", "starts_with", "+48"), {"cyd"}),
    ("external_id eq", field("external_id", "eq", "crm-3"), {"cyd"}),
    ("created_at within", field("created_at", "within_last_days", 1), {"ada", "bob", "cyd", "dee"}),
    ("created_at before", field("created_at", "before", "2020-01-01"), set()),
    # custom fields: strings, numbers (JSON numbers and numeric strings), dates, arrays
    ("plan eq", field("fields.plan", "eq", "pro"), {"ada", "cyd"}),
    ("plan in", field("fields.plan", "in", ["free", "pro"]), {"ada", "bob", "cyd"}),
    ("plan ne", field("fields.plan", "ne", "pro"), {"bob", "dee"}),
    ("age gt (number and '30')", field("fields.age", "gt", 20), {"ada", "bob"}),
    ("age lte", field("fields.age", "lte", 7), {"cyd"}),
    ("age gte fractional", field("fields.age", "gte", 29.5), {"ada", "bob"}),
    ("score eq number vs '17'", field("fields.score", "eq", 17), {"ada"}),
    ("age in numbers", field("fields.age", "in", [7, 30]), {"bob", "cyd"}),
    ("plan eq is not numeric", field("fields.plan", "gt", 1), set()),
    (
        "signup after (bad date ignored)",
        field("fields.signup", "after", "2025-01-01"),
        {"ada", "bob"},
    ),
    ("signup before", field("fields.signup", "before", "2025-06-01T09:00:00Z"), {"bob"}),
    ("signup gte date", field("fields.signup", "gte", "2025-06-01T08:00:00Z"), {"ada", "bob"}),
    ("interests contains", field("fields.interests", "contains", "golf"), {"ada"}),
    ("plan contains", field("fields.plan", "contains", "RO"), {"ada", "cyd"}),
    ("plan exists", field("fields.plan", "exists"), {"ada", "bob", "cyd"}),
    ("plan not_exists", field("fields.plan", "not_exists"), {"dee"}),
    # tags: exact, GIN operators
    ("tag", {"type": "tag", "tag": "vip"}, {"ada"}),
    ("tags all", {"type": "tag", "tags": ["vip", "beta"]}, {"ada"}),
    ("tags any", {"type": "tag", "tags": ["vip", "beta"], "match": "any"}, {"ada", "bob"}),
    ("tag has_not", {"type": "tag", "tag": "vip", "op": "has_not"}, {"bob", "cyd", "dee"}),
    # lists, consent, suppressions
    ("in_list", {"type": "in_list", "list": "newsletter"}, {"ada"}),
    ("consent granted", {"type": "consent", "channel": "email"}, {"ada"}),
    ("consent revoked", {"type": "consent", "channel": "email", "status": "revoked"}, {"bob"}),
    ("consent none", {"type": "consent", "channel": "email", "status": "none"}, {"cyd", "dee"}),
    ("suppressed email", {"type": "suppressed", "channel": "email"}, {"bob"}),
    ("suppressed any", {"type": "suppressed"}, {"bob"}),
    ("suppressed sms", {"type": "suppressed", "channel": "sms"}, set()),
    ("suppressed bounced", {"type": "suppressed", "reason": "bounced"}, set()),
    # custom events: counts, windows, properties
    (
        "purchase 2+ in 30 days",
        {"type": "event", "name": "purchase", "min_count": 2, "within_days": 30},
        {"ada"},
    ),
    (
        "purchase in 30 days",
        {"type": "event", "name": "purchase", "within_days": 30},
        {"ada", "bob"},
    ),
    ("purchase 3+ ever", {"type": "event", "name": "purchase", "min_count": 3}, {"ada", "bob"}),
    (
        "no purchase in 30 days",
        {"type": "event", "name": "purchase", "max_count": 0, "within_days": 30},
        {"cyd", "dee"},
    ),
    (
        "purchase 1..2 in 30 days",
        {"type": "event", "name": "purchase", "max_count": 2, "within_days": 30},
        {"bob"},
    ),
    ("purchase where", {"type": "event", "name": "purchase", "where": {"sku": "a"}}, {"ada"}),
    ("unknown event", {"type": "event", "name": "refund"}, set()),
    # engagement: people only by default; a click proves an open
    ("opened, human", {"type": "opened"}, {"ada", "cyd"}),
    ("opened incl. machine", {"type": "opened", "include_machine": True}, {"ada", "bob", "cyd"}),
    ("opened in 30 days", {"type": "opened", "within_days": 30}, {"ada"}),
    ("opened 2 emails", {"type": "opened", "min_count": 2}, set()),  # one email, opened twice
    ("opened template", {"type": "opened", "template": "welcome"}, {"ada"}),
    ("opened in journey", {"type": "opened", "journey": "onboarding"}, {"ada"}),
    ("clicked any email", {"type": "clicked", "channel": "email"}, {"cyd"}),
    ("clicked in 30 days", {"type": "clicked", "within_days": 30}, set()),
    ("clicked link", {"type": "clicked", "link": "offer", "template": "promo"}, {"cyd"}),
    # enrollments
    ("enrolled", {"type": "enrolled_in", "journey": "onboarding"}, {"ada", "bob"}),
    (
        "met the goal",
        {"type": "enrolled_in", "journey": "onboarding", "exit_reason": "goal_met"},
        {"ada"},
    ),
    (
        "in flight",
        {"type": "enrolled_in", "journey": "onboarding", "status": "in_flight"},
        {"bob"},
    ),
    # nesting
    (
        "all + not",
        {
            "type": "all",
            "conditions": [
                {"type": "tag", "tag": "beta"},
                {"type": "not", "condition": {"type": "suppressed", "channel": "email"}},
            ],
        },
        {"ada"},
    ),
    (
        "any",
        {
            "type": "any",
            "conditions": [
                {"type": "in_list", "list": "vip-list"},
                field("fields.age", "gt", 40),
            ],
        },
        {"ada", "cyd"},
    ),
    (
        "not any (missing fields do not drop contacts)",
        {
            "type": "not",
            "condition": {
                "type": "any",
                "conditions": [
                    {"type": "in_list", "list": "vip-list"},
                    field("fields.age", "gt", 40),
                ],
            },
        },
        {"bob", "dee"},
    ),
]


@pytest.mark.parametrize(("filter", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_each_filter_selects_exactly_the_right_contacts(
    sessions: SessionFactory, filter: dict[str, Any], expected: set[str]
) -> None:
    ids = await populate(sessions)
    assert await members(sessions, ids, filter) == expected


async def test_count_preview_contains_and_keyset_pages(sessions: SessionFactory) -> None:
    ids = await populate(sessions)
    beta = FILTER.validate_python({"type": "tag", "tags": ["vip", "beta"], "match": "any"})
    everyone = FILTER.validate_python(field("created_at", "exists"))
    async with sessions() as session:
        assert await service.count(session, beta) == 2
        assert {c.id for c in await service.preview(session, beta, 10)} == {ids["ada"], ids["bob"]}
        assert len(await service.preview(session, everyone, 3)) == 3
        assert await service.contains(session, beta, ids["ada"])
        assert not await service.contains(session, beta, ids["cyd"])
        assert not await service.contains(session, beta, uuid.uuid4())

        pages: list[list[uuid.UUID]] = []
        after = None
        while True:
            page = list(await session.scalars(service.members_query(everyone, after).limit(3)))
            if not page:
                break
            pages.append(page)
            after = page[-1]
    assert [len(p) for p in pages] == [3, 1]
    flat = [c for p in pages for c in p]
    assert flat == sorted(ids.values()) and len(set(flat)) == 4


async def test_contains_works_on_a_saved_segment(sessions: SessionFactory) -> None:
    ids = await populate(sessions)
    saved = await service.put_segment(
        sessions, "goal-met", "Met the onboarding goal",
        {"type": "enrolled_in", "journey": "onboarding", "exit_reason": "goal_met"},
    )  # fmt: skip
    async with sessions() as session:
        segment = await service.get_segment(session, "goal-met")
        assert saved.created and segment.id == saved.segment.id
        assert await service.contains(session, segment, ids["ada"])
        assert not await service.contains(session, segment, ids["bob"])


def refused(filter: dict[str, Any], **kwargs: Any) -> dict[str, str]:
    with pytest.raises(Invalid) as caught:
        compile_filter(FILTER.validate_python(filter), **kwargs)
    return {p["path"]: p["message"] for p in caught.value.detail}


def test_compiler_refuses_unknown_fields_and_wrong_value_types_with_paths() -> None:
    found = refused(
        {
            "type": "all",
            "conditions": [
                field("colour", "eq", "blue"),
                field("fields.age", "gt", "abc"),
                field("email", "gt", 3),
                field("email", "eq", 5),
                {"type": "not", "condition": field("created_at", "within_last_days", "7")},
                field("fields.plan", "in", "pro"),
                field("fields.", "exists"),
                field("created_at", "before", "yesterday"),
            ],
        }
    )
    assert found == {
        "filter.conditions.0.field": "unknown field 'colour': use one of email, phone, "
        "external_id, time_zone, created_at, updated_at, or fields.<name>",
        "filter.conditions.1.value": "expected a number for gt (or an ISO date, to compare dates)",
        "filter.conditions.2.op": "operator 'gt' does not apply to email (text)",
        "filter.conditions.3.value": "expected a string for eq",
        "filter.conditions.4.condition.value": "expected a whole number of days for "
        "within_last_days",
        "filter.conditions.5.value": "expected a non-empty list for in",
        "filter.conditions.6.field": "name the custom field: fields.<name>",
        "filter.conditions.7.value": "expected a date (ISO 8601, e.g. 2026-01-31) for before",
    }


def test_field_types_registry_refuses_a_literal_of_another_type() -> None:
    types = {"age": "number", "renewal": "date"}
    assert refused(field("fields.age", "eq", "forty"), field_types=types) == {
        "filter.value": "expected a number for eq: fields.age holds numbers"
    }
    assert refused(field("fields.age", "after", "2026-01-01"), field_types=types) == {
        "filter.op": "operator 'after' needs a date: fields.age holds numbers"
    }
    # A field the registry does not know, and literals of the right type, are fine.
    compile_filter(FILTER.validate_python(field("fields.plan", "eq", 3)), field_types=types)  # type: ignore[arg-type]
    compile_filter(FILTER.validate_python(field("fields.age", "gt", 3)), field_types=types)  # type: ignore[arg-type]


def test_shape_errors_are_refused_by_the_definition() -> None:
    with pytest.raises(Invalid) as caught:
        service.parse_filter(
            {
                "type": "all",
                "conditions": [
                    {"type": "field", "field": "email", "op": "eq"},
                    {"type": "tag", "tag": "x", "colour": "blue"},
                    {"type": "sometimes"},
                    {"type": "event", "name": "buy", "min_count": 3, "max_count": 1},
                ],
            }
        )
    found = {p["path"]: p["message"] for p in caught.value.detail}
    assert found["filter.conditions.0"] == "operator 'eq' needs a value"
    assert found["filter.conditions.1.colour"] == "Extra inputs are not permitted"
    assert "does not match any of the expected tags" in found["filter.conditions.2"]
    assert found["filter.conditions.3"] == "max_count is below min_count"


# --- the HTTP API -------------------------------------------------------------------------

ENGAGED_BETA = {
    "type": "all",
    "conditions": [
        {"type": "tag", "tag": "beta"},
        {"type": "not", "condition": {"type": "suppressed", "channel": "email"}},
    ],
}


async def test_segments_api_save_count_preview_delete(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ids = await populate(sessions)
    created = await api.put("/v1/segments/beta", json={"name": "Beta", "filter": ENGAGED_BETA})
    replaced = await api.put(
        "/v1/segments/beta",
        json={"name": "Beta testers", "filter": {"type": "tag", "tag": "beta"}},
    )
    await api.put("/v1/segments/newsletter", json={"name": "N", "filter": ENGAGED_BETA})

    assert created.status_code == 201, created.text
    assert created.json()["filter"] == ENGAGED_BETA  # stored as written, no defaults added
    assert replaced.status_code == 200, replaced.text
    got = ok(await api.get("/v1/segments/beta"))
    assert (got["name"], got["filter"]) == ("Beta testers", {"type": "tag", "tag": "beta"})
    assert [s["key"] for s in ok(await api.get("/v1/segments"))["items"]] == ["beta", "newsletter"]

    assert ok(await api.post("/v1/segments/beta/count")) == {"count": 2}
    preview = ok(await api.get("/v1/segments/beta/preview", params={"limit": 1}))
    assert preview["count"] == 2 and len(preview["items"]) == 1
    assert preview["items"][0]["id"] in {str(ids["ada"]), str(ids["bob"])}

    assert (await api.delete("/v1/segments/beta")).status_code == 204
    assert (await api.get("/v1/segments/beta")).status_code == 404
    assert (await api.post("/v1/segments/beta/count")).status_code == 404
    assert (await api.delete("/v1/segments/beta")).status_code == 404


async def test_unsaved_filter_preview_shows_the_count_before_saving(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ids = await populate(sessions)
    body = ok(await api.post("/v1/segments/preview", json={"filter": ENGAGED_BETA, "limit": 5}))
    assert body["count"] == 1
    assert [item["id"] for item in body["items"]] == [str(ids["ada"])]
    assert body["items"][0]["email"] == "ada@example.com"
    async with sessions() as session:
        assert await service.list_segments(session) == []  # nothing saved


async def test_api_refuses_bad_filters_with_paths(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    await populate(sessions)
    bad = {
        "type": "all",
        "conditions": [
            {"type": "in_list", "list": "no-such-list"},
            field("fields.age", "gt", "old"),
            {"type": "enrolled_in", "journey": "nope"},
            {"type": "opened", "template": "missing"},
        ],
    }
    for response in (
        await api.put("/v1/segments/bad", json={"name": "Bad", "filter": bad}),
        await api.post("/v1/segments/preview", json={"filter": bad}),
    ):
        assert problems(response) == {
            "filter.conditions.0.list": "no list 'no-such-list'",
            "filter.conditions.1.value": "expected a number for gt (or an ISO date, to compare "
            "dates)",
            "filter.conditions.2.journey": "no journey 'nope'",
            "filter.conditions.3.template": "no template 'missing'",
        }
    shape = await api.post(
        "/v1/segments/preview", json={"filter": {"type": "field", "field": "colour", "op": "eq"}}
    )
    assert problems(shape) == {"filter": "operator 'eq' needs a value"}
    unknown = await api.post("/v1/segments/preview", json={"filter": field("colour", "eq", "blue")})
    assert "filter.field" in problems(unknown)
    bad_key = await api.put("/v1/segments/Not A Key", json={"name": "x", "filter": bad})
    assert "path.key" in problems(bad_key)
    assert (await api.get("/v1/segments/bad")).status_code == 404
