"""Each seed scenario of tests/test_seed_scenarios.py, run for real (real worker, Postgres,
the test server shared by the tests) and simulated with the same behaviour scripted: the same
path, outcomes, sends, end and contact."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from nurture.db.engine import SessionFactory
from nurture.db.models import Contact
from nurture.journeys.publishing import save_draft
from nurture.simulation.report import SimulatedContactReport
from tests.support import (
    example,
    finish,
    make_contact,
    make_lists,
    publish_journey,
    reach_step,
    reload,
    sent_templates,
    signal_event,
    start,
)
from tests.test_simulation import run

pytestmark = pytest.mark.usefixtures("worker")

Handle = WorkflowHandle[Any, Any]
Driver = Callable[[Handle, WorkflowEnvironment, SessionFactory, uuid.UUID], Awaitable[None]]


async def _nothing(*_: Any) -> None:
    return None


def _click(wait_at: str, step: str, link: str) -> Driver:
    async def drive(handle: Handle, env: Any, sessions: Any, contact_id: Any) -> None:
        await reach_step(handle, wait_at)
        await signal_event(handle, kind="click", step=step, link=link)

    return drive


async def _becomes_customer(
    handle: Handle, env: WorkflowEnvironment, sessions: SessionFactory, contact_id: uuid.UUID
) -> None:
    await reach_step(handle, "wait_2d")
    async with sessions.begin() as session:
        contact = await session.get(Contact, contact_id)
        assert contact is not None
        contact.fields = {**contact.fields, "lifecycle_stage": "customer"}
    await handle.signal("contact_changed")


async def _purchase_in_wait_3d(
    handle: Handle, env: WorkflowEnvironment, sessions: SessionFactory, contact_id: uuid.UUID
) -> None:
    await reach_step(handle, "wait_2d")
    await env.sleep(timedelta(days=2, hours=1))
    await reach_step(handle, "wait_3d")
    await signal_event(handle, kind="custom", name="purchase")


async def _login(handle: Handle, *_: Any) -> None:
    await reach_step(handle, "logged_in")
    await signal_event(handle, kind="custom", name="login")


@dataclass
class Scenario:
    journey: str
    contact: dict[str, Any]  # make_contact's values, and the simulated contact's
    real: Driver
    behaviour: list[dict[str, Any]] = field(default_factory=list)
    lists: tuple[str, ...] = ()
    launch_in: timedelta | None = None  # dynamics-launch: the launch date from "now"


SCENARIOS = {
    "benchmark-click-purchase": Scenario(
        "benchmark-welcome",
        {"email": "a@example.com", "fields": {"customer_type": "lead"}},
        _click("wait_1d", "welcome", "purchase"),
        [{"clicks": "welcome", "link": "purchase", "after": "1h"}],
        lists=("paid-customers",),
    ),
    "benchmark-click-other-link": Scenario(
        "benchmark-welcome",
        {"email": "a@example.com", "fields": {"customer_type": "lead"}},
        _click("wait_1d", "welcome", "blog"),
        [{"clicks": "welcome", "link": "blog", "after": "1h"}],
        lists=("paid-customers",),
    ),
    "hubspot-becomes-customer": Scenario(
        "hubspot-nurture-goal",
        {"email": "a@example.com", "fields": {"lifecycle_stage": "lead"}},
        _becomes_customer,
        [{"set": {"lifecycle_stage": "customer"}, "at": "1d"}],
    ),
    "hubspot-purchase-during-wait": Scenario(
        "hubspot-nurture-goal",
        {"email": "a@example.com", "fields": {"lifecycle_stage": "lead"}},
        _purchase_in_wait_3d,
        [{"event": "purchase", "at": "2d1h"}],
    ),
    "hubspot-customer-not-enrolled": Scenario(
        "hubspot-nurture-goal",
        {"email": "a@example.com", "fields": {"lifecycle_stage": "Customer"}},
        _nothing,
    ),
    "dynamics-click-launch-past": Scenario(
        "dynamics-launch",
        {"email": "a@example.com", "phone": "+48500100200"},
        _click("clicked_product", "announcement", "product"),
        [{"clicks": "announcement", "link": "product", "after": "1h"}],
        launch_in=timedelta(days=-30),
    ),
    "dynamics-click-launch-ahead": Scenario(
        "dynamics-launch",
        {"email": "a@example.com", "phone": "+48500100200"},
        _click("clicked_product", "announcement", "product"),
        [{"clicks": "announcement", "link": "product", "after": "1h"}],
        launch_in=timedelta(days=20),
    ),
    "dynamics-no-click": Scenario(
        "dynamics-launch", {"email": "a@example.com", "phone": "+48500100200"}, _nothing
    ),
    "register-no-login": Scenario(
        "register-coupon", {"email": "a@example.com", "phone": "+8613800000000"}, _nothing
    ),
    "register-logs-in": Scenario(
        "register-coupon",
        {"email": "a@example.com"},
        _login,
        [{"event": "login", "at": "1h"}],
    ),
}


def _with_launch(definition: dict[str, Any], now: Any, launch_in: timedelta) -> dict[str, Any]:
    launch = (now + launch_in).replace(microsecond=0, tzinfo=None).isoformat()  # Warsaw time
    definition["steps"]["until_launch"]["until"] = launch
    return definition


def _outcome(outcome: str | None) -> str | None:
    """Event ids differ between the runs (scripted events have their own), and so do the
    clocks (the tests' shared server is years ahead): the kind of outcome stays."""
    if outcome and outcome.startswith("event "):
        return "event"
    return re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+[+-]\d\d:\d\d", "<moment>", outcome or "") or None


@pytest.mark.parametrize("name", SCENARIOS)
async def test_simulation_takes_the_path_of_the_real_run(
    name: str,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    scenario = SCENARIOS[name]
    await make_lists(sessions, *scenario.lists)
    definition = example(scenario.journey)
    if scenario.launch_in is not None:  # relative to the shared test server's clock
        definition = _with_launch(definition, await env.get_current_time(), scenario.launch_in)
    await publish_journey(sessions, definition)
    contact_id = await make_contact(sessions, **scenario.contact)
    _, handle = await start(sessions, client, task_queue, scenario.journey, contact_id)
    await scenario.real(handle, env, sessions, contact_id)
    real = await finish(env, handle)
    real_contact = await reload(sessions, Contact, contact_id)

    version: str = "live"
    if scenario.launch_in is not None:  # the simulation's clock starts at the real now
        from datetime import UTC, datetime

        async with sessions.begin() as session:
            await save_draft(
                session,
                _with_launch(example(scenario.journey), datetime.now(UTC), scenario.launch_in),
                key=scenario.journey,
            )
        version = "draft"
    report = await run(
        sessions,
        scenario.journey,
        version=version,
        contacts=[{**scenario.contact, "behaviour": scenario.behaviour}],
    )
    simulated: SimulatedContactReport = report.contacts[0]

    assert (simulated.status, simulated.reason) == (real.status, real.reason)
    assert [(s.step, _outcome(s.outcome)) for s in simulated.path] == [
        (p.step, _outcome(p.outcome)) for p in real.path
    ]
    assert [
        s.message.template for s in simulated.path if s.message and s.message.status == "sent"
    ] == await sent_templates(sessions, contact_id)
    assert simulated.contact_at_end.fields == real_contact.fields
    assert simulated.contact_at_end.tags == real_contact.tags
    assert all(b.delivered for b in simulated.behaviour), simulated.behaviour
