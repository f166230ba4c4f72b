"""Every activity the enrollment workflow can run has a stand-in in the simulation.

Other branches add activities (send rules, new step kinds): when one is merged without its
stand-in, these fail and name it, with where to add it (nurture/simulation/standins.py)."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest

import worker as worker_module
from nurture.simulation.standins import (
    OTHER_WORKFLOWS_ACTIVITIES,
    STAND_INS,
    World,
    activity_name,
    stand_in_activities,
)

ENROLLMENT = Path(__file__).resolve().parent.parent / "workflows" / "enrollment.py"


def _simulated() -> set[str]:
    world = World(
        journey_key="x", templates={}, list_keys=set(), existing_segments=set(), public_base_url=""
    )
    return {name for fn in stand_in_activities(world) if (name := activity_name(fn))}


def _registered_by_the_worker(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The activity names `build_worker` registers, read from every Worker it builds (the
    enrollment worker and the channels' send workers)."""
    captured: list[Any] = []

    def capture(*args: Any, **kwargs: Any) -> None:
        captured.extend(kwargs.get("activities", []))

    monkeypatch.setattr(worker_module, "Worker", capture)
    worker_module.build_worker(object(), object(), "q")  # type: ignore[arg-type]
    return {name for fn in captured if (name := activity_name(fn))}


def test_every_activity_the_worker_registers_has_a_stand_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registered = _registered_by_the_worker(monkeypatch)
    assert len(registered) >= 6  # the capture worked
    missing = registered - _simulated() - OTHER_WORKFLOWS_ACTIVITIES
    assert not missing, (
        f"activities without a stand-in in nurture/simulation/standins.py: {sorted(missing)}; "
        "add a method of the same name to the stand-in class mirroring its activities class "
        "(STAND_INS), or, if JourneyEnrollment never runs it, add it to "
        "OTHER_WORKFLOWS_ACTIVITIES"
    )


def test_every_activity_the_enrollment_workflow_names_has_a_stand_in() -> None:
    """Read from the workflow's source: each `<Class>Activities.<method>` it executes."""
    named = {
        node.attr
        for node in ast.walk(ast.parse(ENROLLMENT.read_text()))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id.endswith("Activities")
    }
    assert {"send_message", "load_contact", "update_contact"} <= named  # the scan works
    assert named - _simulated() == set()
    assert not named & OTHER_WORKFLOWS_ACTIVITIES


@pytest.mark.parametrize("real", sorted(STAND_INS))
def test_each_stand_in_class_mirrors_its_activities_class(real: str) -> None:
    module, _, name = real.rpartition(".")
    real_class = getattr(importlib.import_module(module), name)
    stand_in = STAND_INS[real]

    def activities(cls: type) -> dict[str, str]:
        return {
            method: activity
            for method, fn in inspect.getmembers(cls, inspect.isfunction)
            if (activity := activity_name(fn)) is not None
        }

    assert activities(stand_in) == activities(real_class)
