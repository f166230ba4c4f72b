"""Bounded contacts (issue 10, item 4): a field value, all of a contact's fields and an event's
properties have size limits (settings.max_field_bytes, max_contact_bytes,
max_event_properties_bytes), refused with a 413 naming the field wherever they are written (the
API, a CSV import row, a journey's update_contact step); a contact at the limit still runs, and
one stored over Temporal's payload limit before the limits ends its enrollment instead of
retrying its load forever."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.audience.limits import json_size
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, Enrollment
from nurture.journeys.validation import InvalidJourney, validate_journey
from nurture.settings import Settings, get_settings
from tests.support import finish, make_contact, ok, publish_journey, reload, start

pytestmark = pytest.mark.usefixtures("worker")

FIELD_LIMIT = 1024
CONTACT_LIMIT = 4096


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Limits small enough to pass under the tests' 64 KB body limit (the API, the import
    and the worker's activities all read them from the process settings)."""
    monkeypatch.setenv("MAX_FIELD_BYTES", str(FIELD_LIMIT))
    monkeypatch.setenv("MAX_CONTACT_BYTES", str(CONTACT_LIMIT))
    monkeypatch.setenv("MAX_EVENT_PROPERTIES_BYTES", str(FIELD_LIMIT * 2))
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def refused(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["error"] == "payload_too_large"
    return {p["path"]: p["message"] for p in body["detail"]}


def test_the_defaults_and_the_ceiling() -> None:
    settings = Settings()
    assert (settings.max_field_bytes, settings.max_contact_bytes) == (64 * 1024, 256 * 1024)
    # Past half of Temporal's 2 MB payload limit a contact could not be loaded: refused.
    with pytest.raises(ValueError, match="max_contact_bytes"):
        Settings(max_contact_bytes=2 * 1024 * 1024)


@pytest.mark.usefixtures("small_limits")
async def test_the_api_refuses_a_field_or_contact_over_the_limit(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    big = "x" * FIELD_LIMIT
    problems = refused(await api.put("/v1/contacts/crm-1", json={"fields": {"bio": big}}))
    assert list(problems) == ["fields.bio"]
    assert "over the limit of 1024" in problems["fields.bio"]
    assert "max_field_bytes" in problems["fields.bio"]

    # Patches each under the field limit add up: the one that would pass the contact limit
    # is refused, and nothing of it is stored.
    ok(await api.put("/v1/contacts/crm-1", json={"email": "ada@example.com"}), 201)
    part = "y" * (FIELD_LIMIT - 100)
    for i in range(4):
        ok(await api.patch("/v1/contacts/crm-1", json={"fields": {f"part{i}": part}}))
    too_much = await api.patch("/v1/contacts/crm-1", json={"fields": {"part4": part}})
    assert list(refused(too_much)) == ["fields"]
    contact = ok(await api.get("/v1/contacts/crm-1"))
    assert sorted(contact["fields"]) == ["part0", "part1", "part2", "part3"]
    assert json_size(contact["fields"]) <= CONTACT_LIMIT
    # Making it smaller is always allowed.
    ok(await api.patch("/v1/contacts/crm-1", json={"fields": {"part0": None}}))

    replaced = {"fields": {f"f{i}": part for i in range(5)}}
    assert list(refused(await api.put("/v1/contacts/crm-2", json=replaced))) == ["fields"]


@pytest.mark.usefixtures("small_limits")
async def test_event_properties_are_bounded(api: httpx.AsyncClient) -> None:
    ok(await api.put("/v1/contacts/crm-1", json={"email": "ada@example.com"}), 201)
    event: dict[str, Any] = {"external_id": "crm-1", "name": "order"}
    one = refused(await api.post("/v1/events", json={**event, "properties": {"note": "x" * 2000}}))
    assert list(one) == ["properties.note"]
    many = {f"p{i}": "x" * 500 for i in range(5)}
    assert list(refused(await api.post("/v1/events", json={**event, "properties": many}))) == [
        "properties"
    ]
    ok(await api.post("/v1/events", json={**event, "properties": {"total": 12}}), 202)


@pytest.mark.usefixtures("small_limits")
async def test_an_import_refuses_the_rows_over_the_limits(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    part = "y" * (FIELD_LIMIT - 100)
    ok(
        await api.put("/v1/contacts/full", json={"fields": {f"f{i}": part for i in range(4)}}),
        201,
    )
    text = (
        "external_id,note\n"
        f"crm-1,{'x' * 2000}\n"  # one value over the field limit
        "crm-2,fine\n"
        f"full,{part}\n"  # the stored contact would pass the contact limit
        "full2,small\n"
    )
    body = ok(
        await api.post(
            "/v1/contacts/import", content=text.encode(), headers={"Content-Type": "text/csv"}
        )
    )
    errors = {e["row"]: e["message"] for e in body["errors"]}
    assert sorted(errors) == [2, 4], body
    assert errors[2].startswith("fields.note: the value is 2002 bytes")
    assert "max_contact_bytes" in errors[4]
    assert (body["imported"], body["created"], body["updated"]) == (2, 2, 0)
    full = ok(await api.get("/v1/contacts/full"))
    assert "note" not in full["fields"]
    assert ok(await api.get("/v1/contacts/crm-2"))["fields"] == {"note": "fine"}
    assert (await api.get("/v1/contacts/crm-1")).status_code == 404


def journey(key: str, start_step: str, **steps: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "name": key, "start": start_step, "steps": steps}


@pytest.mark.usefixtures("small_limits")
async def test_an_update_contact_step_over_the_limit_fails_and_the_journey_goes_on(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    part = "y" * (FIELD_LIMIT - 100)
    definition = journey(
        "grow",
        "grow",
        grow={"type": "update_contact", "set": {"more": part}, "next": "tag"},
        tag={"type": "update_contact", "add_tags": ["reached-the-end"]},
    )
    await publish_journey(sessions, definition)
    contact_id = await make_contact(sessions, fields={f"f{i}": part for i in range(4)})
    _, handle = await start(sessions, client, task_queue, "grow", contact_id)

    result = await finish(env, handle)

    (grow, tag) = [(p.step, p.outcome) for p in result.path]
    assert grow[0] == "grow" and str(grow[1]).startswith(
        "failed: fields: the contact's custom fields"
    )
    assert tag == ("tag", "done")
    contact = await reload(sessions, Contact, contact_id)
    assert "more" not in contact.fields
    assert contact.tags == ["reached-the-end"]


BRANCH_ON_FIELDS = journey(
    "reads-big-fields",
    "split",
    split={
        "type": "branch",
        "rules": [
            {
                "condition": {
                    "type": "all",
                    "conditions": [
                        {"type": "field", "field": f"f{i}", "op": "exists"} for i in range(4)
                    ],
                },
                "next": "seen",
            }
        ],
        "default": None,
    },
    seen={"type": "exit", "reason": "read_all_four"},
)


async def test_a_contact_at_the_limit_runs(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    """The default limits: four fields of nearly 64 KB, 256 KB together, all read by the
    journey (so all loaded into the workflow)."""
    limits = Settings()
    # Each value with its name, quotes and separators takes a quarter of the contact limit.
    value = "z" * (limits.max_contact_bytes // 4 - 12)
    fields = {f"f{i}": value for i in range(4)}
    assert limits.max_field_bytes - 20 < json_size(value) <= limits.max_field_bytes
    assert limits.max_contact_bytes - 10 < json_size(fields) <= limits.max_contact_bytes
    await publish_journey(sessions, BRANCH_ON_FIELDS)
    contact_id = await make_contact(sessions, fields=fields)
    _, handle = await start(sessions, client, task_queue, "reads-big-fields", contact_id)

    result = await finish(env, handle)

    assert (result.status, result.reason) == ("exited", "read_all_four")


async def test_a_contact_stored_over_the_payload_limit_ends_its_enrollment(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    """The issue's contact: 2.7 MB stored before the limits (three 900 KB fields), read by the
    journey. Its load used to be retried forever; now the enrollment exits, and says why."""
    fields = {f"f{i}": "w" * 900_000 for i in range(4)}
    await publish_journey(sessions, BRANCH_ON_FIELDS)
    contact_id = await make_contact(sessions, fields=fields)
    enrollment, handle = await start(sessions, client, task_queue, "reads-big-fields", contact_id)

    result = await finish(env, handle)

    assert (result.status, result.reason) == ("exited", "contact_too_large")
    row = await reload(sessions, Enrollment, enrollment.id)
    assert (row.status, row.exit_reason) == ("exited", "contact_too_large")


@pytest.mark.usefixtures("small_limits")
def test_a_journey_setting_a_value_over_the_field_limit_does_not_validate() -> None:
    definition = journey(
        "too-big", "grow", grow={"type": "update_contact", "set": {"bio": "x" * FIELD_LIMIT}}
    )
    with pytest.raises(InvalidJourney) as refused:
        validate_journey(definition)
    [problem] = refused.value.problems
    assert problem.path == "steps.grow.set.bio"
    assert "max_field_bytes" in problem.message
