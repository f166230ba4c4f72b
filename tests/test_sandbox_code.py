"""The workflow sandbox imports the workflow module anew for every run: the worker runs every
such import from one code object compiled once per process (nurture.sandbox), in the sandbox
too, with each run still getting module objects of its own."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from temporalio.client import Client

import workflows
from nurture import sandbox
from nurture.db.engine import SessionFactory
from tests.support import finish, make_contact, publish_journey, start

EXITS: dict[str, object] = {
    "key": "sandbox-code",
    "name": "Sandbox code",
    "start": "bye",
    "steps": {"bye": {"type": "exit", "reason": "done"}},
}


@pytest.fixture
def shared() -> Iterator[sandbox.SharedCode]:
    finder = sandbox.share_workflow_code(workflows)
    yield finder


def _import_afresh(name: str) -> ModuleType:
    """As the sandbox imports: through `sys.meta_path`, into a sys.modules without it."""
    saved = sys.modules.pop(name, None)
    try:
        return importlib.import_module(name)
    finally:
        if saved is not None:
            sys.modules[name] = saved


def test_fresh_imports_share_one_code_object_and_nothing_else(
    shared: sandbox.SharedCode,
) -> None:
    compiled = len(shared.compiled)
    first = _import_afresh("workflows.enrollment")
    second = _import_afresh("workflows.enrollment")

    assert first is not second
    one, two = first.JourneyEnrollment, second.JourneyEnrollment
    assert one is not two  # each run its own class, so its own state
    assert one.run.__code__ is two.run.__code__  # the same compiled code
    assert first.__spec__ is not None and first.__spec__.loader is shared
    assert first.__file__ == str(shared.directory / "enrollment.py")
    assert len(shared.compiled) - compiled <= 1  # compiled at most once, however many imports
    assert shared.compiled.count("workflows.enrollment") == 1


def test_installing_twice_keeps_one_finder(shared: sandbox.SharedCode) -> None:
    again = sandbox.share_workflow_code(workflows)
    assert again is shared
    assert sum(finder is shared for finder in sys.meta_path) == 1
    assert sys.meta_path[0] is shared


def test_other_modules_are_left_to_python(shared: sandbox.SharedCode) -> None:
    assert shared.find_spec("nurture.contracts") is None
    assert shared.find_spec("workflows") is None  # the package itself
    assert shared.find_spec("workflows.no_such_module") is None


@pytest.mark.usefixtures("worker")
async def test_the_sandbox_runs_enrollments_from_the_shared_code(
    sessions: SessionFactory, client: Client, task_queue: str, env: object
) -> None:
    """The worker fixture is `worker.build_worker`, which installs the finder."""
    finder = sandbox.share_workflow_code(workflows)
    executed = finder.executed
    await publish_journey(sessions, EXITS)
    for i in range(2):
        contact = await make_contact(sessions, external_id=f"sandbox-{i}")
        _, handle = await start(sessions, client, task_queue, "sandbox-code", contact)
        result = await finish(env, handle)  # type: ignore[arg-type]
        assert result.status == "exited", result

    assert finder.executed - executed >= 2  # one module run per workflow run, at least
    assert finder.compiled.count("workflows.enrollment") == 1
