"""Bounded definitions (issue 10, item 6): what the worker could not run is refused with the
path. A goal nested ~200 deep used to be validated, published and enrolled (201) and then the
worker could not decode the workflow input, so the enrollment stayed pending forever; nested
~900 deep, saving the draft answered 500."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.db.engine import SessionFactory
from nurture.journeys.validation import InvalidJourney, validate_journey
from nurture.nesting import MAX_CONDITION_DEPTH, MAX_DEFINITION_BYTES, MAX_STEPS
from tests.support import finish, make_contact, ok, problems, publish_journey, start

pytestmark = pytest.mark.usefixtures("worker")


def nested(depth: int) -> dict[str, Any]:
    """`all`, `not` and `any` inside each other `depth` deep around one field condition."""
    condition: dict[str, Any] = {"type": "field", "field": "plan", "op": "eq", "value": "pro"}
    for level in range(depth):
        match level % 3:
            case 0:
                condition = {"type": "all", "conditions": [condition]}
            case 1:
                condition = {"type": "not", "condition": {"type": "not", "condition": condition}}
            case _:
                condition = {"type": "any", "conditions": [condition]}
    return condition


def logical_path(condition: dict[str, Any], prefix: str) -> list[str]:
    """The path of each logical operator inside each other, outermost first."""
    paths = []
    while condition.get("type") in ("all", "any", "not"):
        paths.append(prefix)
        if "conditions" in condition:
            condition, prefix = condition["conditions"][0], f"{prefix}.conditions.0"
        else:
            condition, prefix = condition["condition"], f"{prefix}.condition"
    return paths


def count_logical(condition: dict[str, Any]) -> int:
    return len(logical_path(condition, ""))


def with_goal(key: str, criteria: dict[str, Any]) -> dict[str, Any]:
    return {
        "key": key,
        "name": key,
        "goal": {"name": "pro", "criteria": criteria},
        "start": "pause",
        "steps": {"pause": {"type": "wait", "duration": "1d"}},
    }


def exactly(depth: int) -> dict[str, Any]:
    """A condition with exactly `depth` logical operators inside each other."""
    condition: dict[str, Any] = {"type": "field", "field": "plan", "op": "eq", "value": "pro"}
    for level in range(depth):
        if level % 2:
            condition = {"type": "not", "condition": condition}
        else:
            condition = {"type": "all", "conditions": [condition]}
    assert count_logical(condition) == depth
    return condition


async def test_conditions_nested_past_the_limit_are_refused_with_the_path(
    api: httpx.AsyncClient,
) -> None:
    too_deep = exactly(MAX_CONDITION_DEPTH + 1)
    definition = with_goal("deep", too_deep)
    ok(await api.post("/v1/journeys", json=definition), 201)  # a draft may be invalid

    found = problems(await api.post("/v1/journeys/deep/validate"))
    [(path, message)] = found.items()
    assert path == logical_path(too_deep, "goal.criteria")[-1]  # the 21st operator
    assert message == f"conditions (all, any, not) nested more than {MAX_CONDITION_DEPTH} deep"
    assert list(problems(await api.post("/v1/journeys/deep/publish"))) == [path]

    # In a branch rule too.
    branch = {
        "key": "deep-branch",
        "name": "deep branch",
        "start": "split",
        "steps": {
            "split": {
                "type": "branch",
                "rules": [{"condition": exactly(MAX_CONDITION_DEPTH + 1), "next": None}],
            }
        },
    }
    ok(await api.post("/v1/journeys", json=branch), 201)
    [path] = problems(await api.post("/v1/journeys/deep-branch/validate"))
    assert path == logical_path(too_deep, "steps.split.rules.0.condition")[-1]


@pytest.mark.parametrize("depth", [200, 900, 2_000])
async def test_a_draft_nested_hundreds_deep_is_refused_not_a_500(
    api: httpx.AsyncClient, depth: int
) -> None:
    # Written by hand: the json module itself cannot write (or read) this much nesting.
    leaf = json.dumps({"type": "field", "field": "plan", "op": "eq", "value": "pro"})
    criteria = '{"type":"all","conditions":[' * depth + leaf + "]}" * depth
    shell = json.dumps(with_goal("very-deep", {"type": "tag", "tag": "x"}))
    body = shell.replace('{"type": "tag", "tag": "x"}', criteria)
    response = await api.post(
        "/v1/journeys", content=body.encode(), headers={"Content-Type": "application/json"}
    )

    [(path, message)] = problems(response).items()
    # The first object or array past 64 deep, on the way to the innermost condition (or the
    # body itself, past what the JSON parser can read).
    expected = "body.goal.criteria" + ".conditions.0" * 31
    assert path in (expected, expected + ".conditions", "body"), path
    assert message == "nested more than 64 objects and arrays deep"
    assert (await api.get("/v1/journeys/very-deep")).status_code == 404


def test_too_many_steps_or_bytes_are_refused() -> None:
    steps: dict[str, dict[str, Any]] = {
        f"s{i}": {"type": "wait", "duration": "1d", "next": f"s{i + 1}"} for i in range(400)
    }
    steps["s399"]["next"] = None
    with pytest.raises(InvalidJourney) as refused:
        validate_journey({"key": "long", "name": "long", "start": "s0", "steps": steps})
    assert [(p.path, p.message) for p in refused.value.problems] == [
        ("steps", f"400 steps, over the limit of {MAX_STEPS}")
    ]

    big = {"key": "big", "name": "x" * MAX_DEFINITION_BYTES, "start": "a", "steps": {}}
    with pytest.raises(InvalidJourney) as refused:
        validate_journey(big)
    [problem] = refused.value.problems
    assert problem.path == ""
    assert f"over the limit of {MAX_DEFINITION_BYTES}" in problem.message


async def test_a_goal_at_the_limit_is_published_and_runs(
    sessions: SessionFactory, client: Client, env: WorkflowEnvironment, task_queue: str
) -> None:
    """At the limit the worker decodes the workflow input and evaluates the goal: a contact
    who meets it is not enrolled, one who does not is."""
    definition = with_goal("deep-ok", exactly(MAX_CONDITION_DEPTH))
    await publish_journey(sessions, definition)

    # exactly(20): 10 `not`s around the field condition: the goal holds when plan == pro.
    pro = await make_contact(sessions, fields={"plan": "pro"})
    free = await make_contact(sessions, fields={"plan": "free"})
    _, pro_handle = await start(sessions, client, task_queue, "deep-ok", pro)
    _, free_handle = await start(sessions, client, task_queue, "deep-ok", free)

    assert (await finish(env, pro_handle)).reason == "goal_already_met"
    assert (await finish(env, free_handle)).status == "completed"


async def test_segment_filters_are_bounded_too(api: httpx.AsyncClient) -> None:
    tag = {"type": "tag", "tag": "vip"}
    deep: dict[str, Any] = tag
    for _ in range(MAX_CONDITION_DEPTH + 1):
        deep = {"type": "all", "conditions": [deep]}
    [(path, message)] = problems(
        await api.put("/v1/segments/deep", json={"name": "deep", "filter": deep})
    ).items()
    assert path == "filter" + ".conditions.0" * MAX_CONDITION_DEPTH
    assert "nested more than 20 deep" in message

    for _ in range(300):
        deep = {"type": "not", "condition": deep}
    [path] = problems(await api.post("/v1/segments/preview", json={"filter": deep}))
    assert path.startswith("body.filter.condition.condition")

    at_limit: dict[str, Any] = tag
    for _ in range(MAX_CONDITION_DEPTH):
        at_limit = {"type": "any", "conditions": [at_limit]}
    ok(await api.put("/v1/segments/ok", json={"name": "ok", "filter": at_limit}), 201)
