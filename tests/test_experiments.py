"""Splits (A/B/n) and holdouts (issue 13): deterministic per contact, recorded on the
enrollment, the path and the timeline, and reported against the goal."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.audience.contacts import ContactChanges, patch_contact
from nurture.audience.timeline import contact_timeline
from nurture.db.engine import SessionFactory
from nurture.db.models import Enrollment, EnrollmentStep, Message
from nurture.journeys.definition import JourneyDefinition, SplitStep
from nurture.journeys.experiment_report import experiment_report
from nurture.journeys.experiments import in_holdout, split_path
from nurture.journeys.validation import InvalidJourney, validate_journey
from tests.support import finish, make_contact, ok, publish_journey, reload, start, steps_of


def split_journey(key: str = "ab-test", holdout: float = 0, **paths: int) -> dict[str, Any]:
    weights = paths or {"a": 50, "b": 50}
    steps: dict[str, Any] = {
        "split": {
            "type": "split",
            "paths": [{"name": n, "weight": w, "next": f"send_{n}"} for n, w in weights.items()],
        }
    }
    for name in weights:
        steps[f"send_{name}"] = {"type": "send_email", "template": f"{key}-{name}"}
    return {
        "key": key,
        "name": key,
        "entry": {"reentry": "after_exit", "holdout_percent": holdout},
        "goal": {"criteria": {"type": "field", "field": "customer", "value": True}},
        "start": "split",
        "steps": steps,
    }


def test_a_50_50_split_over_1000_contacts_is_close_to_even_and_stable() -> None:
    step = SplitStep.model_validate(split_journey()["steps"]["split"])
    ids = [uuid.UUID(int=i * 7919 + 12345) for i in range(1000)]
    first = [split_path("ab-test", "split", i, step) for i in ids]
    counts = Counter(first)
    assert set(counts) == {"a", "b"}
    assert 450 <= counts["a"] <= 550, counts  # within 5 points of 50/50
    assert first == [split_path("ab-test", "split", i, step) for i in ids]  # stable
    # Another journey (or step) splits the same contacts independently.
    other = [split_path("other-test", "split", i, step) for i in ids]
    assert sum(x != y for x, y in zip(first, other, strict=True)) > 350


def test_a_three_way_split_follows_its_weights() -> None:
    step = SplitStep.model_validate(split_journey(a=34, b=33, c=33)["steps"]["split"])
    counts = Counter(split_path("abc", "split", uuid.uuid4(), step) for _ in range(3000))
    for name, weight in (("a", 34), ("b", 33), ("c", 33)):
        assert abs(counts[name] / 3000 - weight / 100) < 0.04, counts


def test_holdout_share_is_close_to_its_percent_and_stable() -> None:
    ids = [uuid.uuid4() for _ in range(2000)]
    held = [in_holdout("j", i, 10) for i in ids]
    assert 150 <= sum(held) <= 250
    assert held == [in_holdout("j", i, 10) for i in ids]
    assert not any(in_holdout("j", i, 0) for i in ids)


def test_weights_must_sum_to_100_and_names_differ() -> None:
    bad = split_journey(a=50, b=40)
    bad["steps"]["split"]["paths"][1]["name"] = "a"
    bad["steps"]["send_a"] = {"type": "send_email", "template": "x"}
    with pytest.raises(InvalidJourney) as err:
        validate_journey(bad)
    problems = {p.path: p.message for p in err.value.problems}
    assert problems["steps.split.paths"] == "weights must sum to 100 (got 50 + 40 = 90)"
    assert problems["steps.split.paths.1.name"] == 'path name "a" is used twice'
    holdout = split_journey(holdout=100)
    with pytest.raises(InvalidJourney) as err:
        validate_journey(holdout)
    assert "entry.holdout_percent" in str(err.value)


async def test_contacts_take_their_path_on_the_enrollment_path_and_timeline(
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    worker: None,
    task_queue: str,
) -> None:
    definition = split_journey()
    await publish_journey(sessions, definition)
    step = JourneyDefinition.model_validate(definition).steps["split"]
    assert isinstance(step, SplitStep)
    taken: Counter[str] = Counter()
    for _ in range(12):
        contact_id = await make_contact(sessions)
        expected = split_path("ab-test", "split", contact_id, step)
        enrollment, handle = await start(sessions, client, task_queue, "ab-test", contact_id)
        result = await finish(env, handle)
        assert steps_of(result) == ["split", f"send_{expected}"]
        assert result.path[0].outcome == f"path {expected}"
        row = await reload(sessions, Enrollment, enrollment.id)
        assert row.variants == {"split": expected}
        assert row.experiment_group is None  # no holdout in this journey
        async with sessions() as session:
            sent = list(
                await session.scalars(
                    select(col(Message.template)).where(col(Message.contact_id) == contact_id)
                )
            )
            outcome = await session.scalar(
                select(col(EnrollmentStep.outcome)).where(
                    col(EnrollmentStep.enrollment_id) == enrollment.id,
                    col(EnrollmentStep.step_id) == "split",
                )
            )
            timeline = await contact_timeline(session, contact_id)
        assert sent == [f"ab-test-{expected}"]
        assert outcome == f"path {expected}"
        assert any(
            f"step split (split): took path {expected}" in entry.summary
            for entry in timeline.entries
        ), [e.summary for e in timeline.entries]
        taken[expected] += 1
        # Entering again: the same path.
        again, handle = await start(sessions, client, task_queue, "ab-test", contact_id)
        assert steps_of(await finish(env, handle)) == ["split", f"send_{expected}"]
        assert (await reload(sessions, Enrollment, again.id)).variants == {"split": expected}
    assert set(taken) == {"a", "b"}  # 12 contacts: both paths used (2 * 0.5^12 chance not)
    async with sessions() as session:
        report = await experiment_report(session, "ab-test")
    assert {name: arm.contacts for name, arm in report.splits["split"].items()} == dict(taken)


async def test_held_out_contacts_get_nothing_and_still_count_for_the_goal(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    worker: None,
    task_queue: str,
) -> None:
    definition = split_journey("holdout-test", holdout=50)
    await publish_journey(sessions, definition)
    groups: dict[str, list[uuid.UUID]] = {"control": [], "treatment": []}
    for _ in range(16):
        contact_id = await make_contact(sessions)
        enrollment, handle = await start(sessions, client, task_queue, "holdout-test", contact_id)
        result = await finish(env, handle)
        row = await reload(sessions, Enrollment, enrollment.id)
        expected = "control" if in_holdout("holdout-test", contact_id, 50) else "treatment"
        assert row.experiment_group == expected
        groups[expected].append(contact_id)
        if expected == "control":
            assert (result.status, result.reason, result.path) == ("exited", "holdout", [])
        else:
            assert result.status == "completed" and steps_of(result)[0] == "split"
    assert groups["control"] and groups["treatment"]
    async with sessions() as session:
        held_messages = await session.scalar(
            select(col(Message.id)).where(col(Message.contact_id).in_(groups["control"]))
        )
        timeline = await contact_timeline(session, groups["control"][0])
    assert held_messages is None  # held out: sent nothing
    words = [entry.summary for entry in timeline.entries]
    assert any("held out (control group" in w for w in words), words
    assert "Entered journey holdout-test (v1) in the control group through the API" in words

    # One held-out and two treated contacts become customers afterwards.
    for contact_id in [groups["control"][0], *groups["treatment"][:2]]:
        await patch_contact(
            sessions, client, contact_id, ContactChanges(merge_fields={"customer": True})
        )
    async with sessions() as session:
        report = await experiment_report(session, "holdout-test")
    assert report.groups["control"].contacts == len(groups["control"])
    assert report.groups["control"].met_goal == 1
    assert report.groups["treatment"].contacts == len(groups["treatment"])
    assert report.groups["treatment"].met_goal == 2
    shown = ok(await api.get("/v1/journeys/holdout-test/experiment"))
    assert shown["holdout_percent"] == 50
    assert shown["groups"]["control"] == {
        "contacts": len(groups["control"]),
        "met_goal": 1,
        "goal_rate": 1 / len(groups["control"]),
    }
    assert sum(arm["contacts"] for arm in shown["splits"]["split"].values()) == len(
        groups["treatment"]
    )
    assert (await api.get("/v1/journeys/nope/experiment")).status_code == 404
