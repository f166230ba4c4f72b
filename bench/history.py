"""Temporal work per enrollment and per step, read from real workflow histories.

    .venv/bin/python -m bench.history                    # histories: seeds and per-step costs
    .venv/bin/python -m bench.history --json out.json    # and the figures as JSON
    .venv/bin/python -m bench.history --cpu              # and worker + server CPU per enrollment

History mode (always): embedded PostgreSQL (migrated) and Temporal's time-skipping test server
from the pip binary, as the tests run them, with the production worker (`worker.build_worker`)
in this process. It enrolls contacts through `nurture.journeys.enrollments.enroll`, drives them
with the `event` signal and the `progress` query, lets the test server skip the waits, and
counts the events of every run of each enrollment's history (`handle.fetch_history()`,
following continue-as-new back to the first run):

- the seed journeys of examples/journeys/ (benchmark-welcome with a click on its purchase link
  during the wait, hubspot-nurture-goal with its goal met by a custom event during the first
  wait, register-coupon through both timeouts, quickstart with a click);
- synthetic journeys of 1 and of N steps of one type each (send_email, wait 1h, branch,
  update_contact, add_to_list, wait_for ending in its timeout): the cost of one step of that
  type is (N-step - 1-step) / (N - 1), and what is left of the 1-step journey is the fixed cost
  of an enrollment (start, entry check, finish).

CPU mode (`--cpu`): embedded PostgreSQL, ONE Temporal dev server (`bench.stack.dev_server`:
the pip binary, WAL pragmas, search attributes registered) and the worker in a process of its
own (`bench.worker_process`); enrolls `--enrollments` contacts per round in a copy of
benchmark-welcome whose wait is 1 s (no click: welcome, wait, branch, follow-up), waits until
Postgres shows them all completed, and reports the CPU seconds (user + system) the worker and
the server spent per enrollment.

It uses only entry points that stay stable across the engine's rewrites (publishing, `enroll`,
`build_worker`, the `event` signal, the `progress` query), so the same file measures an older
checkout: copy it into that checkout's bench/ and run it there (docs/benchmarks.md, "Temporal
work per step").
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.dialects.postgresql import insert
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from bench.stack import (
    Component,
    CpuMeter,
    dev_server,
    embedded_postgres,
    log,
    worker_process,
)
from bench.workload import count_enrollments, make_contacts, run_pool, wait_for_count
from nurture.binaries import find_binary
from nurture.contracts import (
    EnrollmentEvent,
    EnrollmentProgress,
    EnrollmentResult,
    enrollment_workflow_id,
)
from nurture.db.engine import SessionFactory, create_engine, session_factory
from nurture.db.migrate import upgrade_async
from nurture.db.models import Contact, ContactList, Template, utcnow
from nurture.journeys.enrollments import EnrollmentOptions, enroll
from nurture.journeys.publishing import publish, save_draft
from nurture.tracing import ensure_search_attributes

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "journeys"
TASK_QUEUE = "bench-history"

# --- counting a history --------------------------------------------------------------------------

LOCAL_ACTIVITY_MARKER = "core_local_activity"  # what the SDK core records for a local activity
PATCH_MARKER = "core_patch"  # workflow.patched(...)
CHANGE_VERSION = "TemporalChangeVersion"  # an upsert of only this is not billed

_E = EventType


@dataclass(frozen=True)
class Counts:
    """What one enrollment (all its runs) spent, from its history; floats so that per-step
    differences can be kept as they come."""

    events: float = 0  # history events, all runs
    workflow_tasks: float = 0  # WorkflowTaskCompleted
    workflow_tasks_failed: float = 0  # WorkflowTaskFailed + WorkflowTaskTimedOut
    activities: float = 0  # ActivityTaskScheduled
    activity_attempts: float = 0  # the `attempt` of each ActivityTaskStarted (retries included)
    local_activities: float = 0  # MarkerRecorded "core_local_activity"
    local_activity_wfts: float = 0  # workflow tasks that recorded at least one of those
    patch_markers: float = 0  # MarkerRecorded "core_patch"
    timers: float = 0  # TimerStarted
    signals: float = 0  # WorkflowExecutionSignaled
    upserts: float = 0  # UpsertWorkflowSearchAttributes (all)
    upserts_billed: float = 0  # ... except those of TemporalChangeVersion alone
    memo_upserts: float = 0  # WorkflowPropertiesModified
    continue_as_new: float = 0  # WorkflowExecutionContinuedAsNew
    runs: float = 0  # WorkflowExecutionStarted: the first run and each continue-as-new

    @property
    def billable_actions(self) -> float:
        """An estimate of Temporal Cloud actions, by its published rules
        (https://docs.temporal.io/cloud/actions): each workflow start, continue-as-new
        included; each activity start or retry; all local activities of one workflow task as
        one action (task heartbeats, which the history does not show, would add more); each
        timer started (the implicit timers of `wait_condition(timeout=...)` included); each
        signal; each search-attribute upsert command (those of TemporalChangeVersion alone
        and the attributes given at start are free). Queries are actions too but leave no
        trace in a history (this benchmark's own `progress` polls are not the product's)."""
        return (
            self.runs
            + self.activity_attempts
            + self.local_activity_wfts
            + self.timers
            + self.signals
            + self.upserts_billed
        )

    def minus(self, other: Counts) -> Counts:
        return Counts(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in _FIELDS})

    def divided(self, by: float) -> Counts:
        return Counts(**{f.name: getattr(self, f.name) / by for f in _FIELDS})

    def as_dict(self) -> dict[str, float]:
        values = {f.name: _round(getattr(self, f.name)) for f in _FIELDS}
        values["billable_actions"] = _round(self.billable_actions)
        return values


_FIELDS = fields(Counts)


def _round(value: float) -> float:
    rounded = round(value, 2)
    return int(rounded) if rounded == int(rounded) else rounded


def count_history(runs: Sequence[WorkflowHistory]) -> tuple[Counts, dict[str, int]]:
    """The counts of an enrollment's runs, and the number of events of each type."""
    kinds: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for history in runs:
        last_completed_task: int | None = None
        tasks_with_local_activities: set[int] = set()
        for event in history.events:
            kind = event.event_type
            kinds[_E.Name(kind).removeprefix("EVENT_TYPE_")] += 1
            totals["events"] += 1
            if kind == _E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                totals["runs"] += 1
            elif kind == _E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                totals["workflow_tasks"] += 1
                last_completed_task = event.event_id
            elif kind in (
                _E.EVENT_TYPE_WORKFLOW_TASK_FAILED,
                _E.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
            ):
                totals["workflow_tasks_failed"] += 1
            elif kind == _E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                totals["activities"] += 1
            elif kind == _E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                totals["activity_attempts"] += max(
                    1, event.activity_task_started_event_attributes.attempt
                )
            elif kind == _E.EVENT_TYPE_MARKER_RECORDED:
                name = event.marker_recorded_event_attributes.marker_name
                if name == LOCAL_ACTIVITY_MARKER:
                    totals["local_activities"] += 1
                    # A task's commands follow its WorkflowTaskCompleted event.
                    tasks_with_local_activities.add(last_completed_task or 0)
                elif name == PATCH_MARKER:
                    totals["patch_markers"] += 1
            elif kind == _E.EVENT_TYPE_TIMER_STARTED:
                totals["timers"] += 1
            elif kind == _E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                totals["signals"] += 1
            elif kind == _E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
                totals["upserts"] += 1
                upserted = event.upsert_workflow_search_attributes_event_attributes
                if set(upserted.search_attributes.indexed_fields) - {CHANGE_VERSION}:
                    totals["upserts_billed"] += 1
            elif kind == _E.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED:
                totals["memo_upserts"] += 1
            elif kind == _E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                totals["continue_as_new"] += 1
        totals["local_activity_wfts"] += len(tasks_with_local_activities)
    return Counts(**{k: float(v) for k, v in totals.items()}), dict(sorted(kinds.items()))


async def fetch_runs(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """Every run of a workflow, first to last: the latest run, then back through
    `continued_execution_run_id` while a run was started by continue-as-new."""
    runs = [await client.get_workflow_handle(workflow_id).fetch_history()]
    while True:
        started = runs[0].events[0].workflow_execution_started_event_attributes
        previous = started.continued_execution_run_id
        if not previous:
            return runs
        handle = client.get_workflow_handle(workflow_id, run_id=previous)
        runs.insert(0, await handle.fetch_history())


# --- journeys ------------------------------------------------------------------------------------


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return data


async def make_templates(sessions: SessionFactory, definition: dict[str, Any]) -> None:
    """A template (if missing) for every send step: content must exist to publish."""
    async with sessions.begin() as session:
        for step in definition["steps"].values():
            if step["type"] in ("send_email", "send_sms"):
                channel = "email" if step["type"] == "send_email" else "sms"
                await session.execute(
                    insert(Template)
                    .values(
                        id=uuid.uuid4(),
                        key=step["template"],
                        channel=channel,
                        subject=step["template"] if channel == "email" else None,
                        text="Hi",
                    )
                    .on_conflict_do_nothing()
                )


async def make_lists(sessions: SessionFactory, keys: Sequence[str]) -> None:
    async with sessions.begin() as session:
        for key in keys:
            await session.execute(
                insert(ContactList)
                .values(id=uuid.uuid4(), key=key, name=key)
                .on_conflict_do_nothing(index_elements=["key"])
            )


def lists_of(definition: dict[str, Any]) -> list[str]:
    return [
        step["list"]
        for step in definition["steps"].values()
        if step["type"] in ("add_to_list", "remove_from_list")
    ]


async def publish_definition(sessions: SessionFactory, definition: dict[str, Any]) -> uuid.UUID:
    """Templates and lists first, then the draft, then the published version; returns the
    journey's id."""
    await make_templates(sessions, definition)
    await make_lists(sessions, lists_of(definition))
    async with sessions.begin() as session:
        journey = await save_draft(session, copy.deepcopy(definition))
        await publish(session, definition["key"])
    return journey.id


STEP_TYPES = ("send_email", "wait", "branch", "update_contact", "add_to_list", "wait_for")


def synthetic(step_type: str, n: int) -> dict[str, Any]:
    """A journey of `n` steps of one type, one after the other (s1 -> s2 -> ... -> sn)."""
    steps: dict[str, Any] = {}
    for i in range(1, n + 1):
        following = f"s{i + 1}" if i < n else None
        step: dict[str, Any]
        match step_type:
            case "send_email":
                step = {"type": "send_email", "template": "bench-step-mail", "next": following}
            case "wait":
                step = {"type": "wait", "duration": "1h", "next": following}
            case "branch":
                condition = {"type": "field", "field": "plan", "op": "eq", "value": "pro"}
                step = {
                    "type": "branch",
                    "rules": [{"condition": condition, "next": following}],
                    "default": following,
                }
            case "update_contact":
                step = {"type": "update_contact", "set": {f"field_{i}": i}, "next": following}
            case "add_to_list":
                step = {"type": "add_to_list", "list": f"bench-list-{i}", "next": following}
            case "wait_for":
                step = {
                    "type": "wait_for",
                    "event": {"type": "custom", "name": "never-sent"},
                    "timeout": "1h",
                    "on_event": following,
                    "on_timeout": following,
                }
            case _:
                raise ValueError(f"no synthetic journey of {step_type!r} steps")
        steps[f"s{i}"] = step
    return {
        "key": f"bench-{step_type.replace('_', '-')}-x{n}",
        "name": f"Benchmark: {n} x {step_type}",
        "trigger": {"type": "api"},
        "start": "s1",
        "steps": steps,
    }


# --- scenarios -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    definition: dict[str, Any]
    expected_path: list[str]
    expected_status: str
    lists: list[str] = field(default_factory=list)  # besides those the steps add to
    contact_fields: dict[str, Any] = field(default_factory=dict)
    # Drive the enrollment: wait until it is at `at_step`, then signal `event`.
    at_step: str | None = None
    event: dict[str, Any] | None = None


def seed_scenarios() -> list[Scenario]:
    return [
        Scenario(
            name="benchmark-welcome: click in the wait",
            definition=example("benchmark-welcome"),
            contact_fields={"customer_type": "lead"},
            at_step="wait_1d",
            event={"kind": "click", "step": "welcome", "link": "purchase"},
            expected_path=["welcome", "wait_1d", "clicked_purchase", "mark_paid", "to_customers"],
            expected_status="completed",
        ),
        Scenario(
            name="hubspot-nurture-goal: goal by event in wait",
            definition=example("hubspot-nurture-goal"),
            contact_fields={"lifecycle_stage": "lead"},
            at_step="wait_2d",
            event={"kind": "custom", "name": "purchase"},
            expected_path=["intro", "wait_2d"],
            expected_status="exited",
        ),
        Scenario(
            name="register-coupon: both timeouts",
            definition=example("register-coupon"),
            expected_path=[
                "welcome",
                "logged_in",
                "coupon",
                "tag_coupon",
                "ordered",
                "care_sms",
                "done",
            ],
            expected_status="exited",
        ),
        Scenario(
            name="quickstart: click",
            definition=example("quickstart"),
            at_step="clicked_shop",
            event={"kind": "click", "step": "welcome", "link": "shop"},
            expected_path=["welcome", "clicked_shop", "mark_interest", "thanks"],
            expected_status="completed",
        ),
    ]


def step_scenarios(step_type: str, n: int) -> tuple[Scenario, Scenario]:
    def one(count: int) -> Scenario:
        definition = synthetic(step_type, count)
        return Scenario(
            name=f"{count} x {step_type}",
            definition=definition,
            expected_path=[f"s{i}" for i in range(1, count + 1)],
            expected_status="completed",
        )

    return one(1), one(n)


@dataclass
class Outcome:
    scenario: str
    journey: str
    status: str
    reason: str | None
    path: list[str]
    expected: bool  # the path and status the scenario expects
    counts: Counts
    event_types: dict[str, int]
    workflow_id: str

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["counts"] = self.counts.as_dict()
        return values


@dataclass
class HistoryBench:
    env: WorkflowEnvironment
    sessions: SessionFactory
    histories_dir: Path | None
    published: set[str] = field(default_factory=set)

    @property
    def client(self) -> Client:
        return self.env.client

    async def run(self, scenario: Scenario) -> Outcome:
        definition = scenario.definition
        if definition["key"] not in self.published:
            await make_lists(self.sessions, scenario.lists)
            await publish_definition(self.sessions, definition)
            self.published.add(definition["key"])
        async with self.sessions.begin() as session:
            contact = Contact(
                external_id=f"history-{uuid.uuid4().hex}",
                email=f"{uuid.uuid4().hex[:12]}@bench.test",
                phone="+15555550100",
                fields=dict(scenario.contact_fields),
            )
            session.add(contact)
        enrollment = await enroll(
            self.sessions,
            self.client,
            EnrollmentOptions(task_queue=TASK_QUEUE),
            definition["key"],
            contact.id,
        )
        handle = self.client.get_workflow_handle(
            enrollment.workflow_id, result_type=EnrollmentResult
        )
        if scenario.at_step is not None:
            await reach_step(handle, scenario.at_step)
        if scenario.event is not None:
            event = EnrollmentEvent(
                event_id=f"history-{uuid.uuid4().hex}", occurred_at=utcnow(), **scenario.event
            )
            await handle.signal("event", event)
            # Its workflow task done before the clock runs again: a timer that fired at once
            # would otherwise share the task or not, from run to run.
            await settle(handle)
        result = await self.result(handle)
        runs = await fetch_runs(self.client, enrollment.workflow_id)
        if self.histories_dir is not None:
            self.histories_dir.mkdir(parents=True, exist_ok=True)
            for i, history in enumerate(runs):
                name = f"{definition['key']}-run{i + 1}.json"
                (self.histories_dir / name).write_text(history.to_json())
        counts, kinds = count_history(runs)
        path = [entry.step for entry in result.path]
        expected = path == scenario.expected_path and result.status == scenario.expected_status
        if not expected:
            log(
                f"  UNEXPECTED: {scenario.name}: {result.status} ({result.reason}) via {path}; "
                f"expected {scenario.expected_status} via {scenario.expected_path}"
            )
        return Outcome(
            scenario=scenario.name,
            journey=definition["key"],
            status=result.status,
            reason=result.reason,
            path=path,
            expected=expected,
            counts=counts,
            event_types=kinds,
            workflow_id=enrollment.workflow_id,
        )

    async def result(self, handle: WorkflowHandle[Any, EnrollmentResult]) -> EnrollmentResult:
        """The enrollment's result, with the test server's clock running free. The server
        ends a long poll after ~20 s without an event; ask again (bounded)."""
        # time_skipping_unlocked exists only on the time-skipping environment class.
        async with self.env.time_skipping_unlocked():  # type: ignore[attr-defined]
            for attempt in range(1, 4):
                try:
                    return await handle.result()
                except RuntimeError as err:
                    if "No completion event found" not in str(err) or attempt == 3:
                        raise
        raise AssertionError("unreachable")


async def reach_step(handle: WorkflowHandle[Any, Any], step: str, within: float = 60) -> None:
    """Wait until the enrollment is idle (its history: no activity and no workflow task in
    flight or due) at `step` (the `progress` query). The test server's clock stays locked
    meanwhile, so a waiting enrollment stays waiting. The query is asked only of an idle
    enrollment: the test server answers a query that arrives while a workflow task is in
    flight with a workflow task of its own, recorded in the history, which a real server does
    not; asked between tasks it leaves no trace."""
    async with asyncio.timeout(within):
        while True:
            if await _idle(handle):
                progress = await handle.query("progress", result_type=EnrollmentProgress)
                if progress.current_step == step:
                    return
            await asyncio.sleep(0.05)


async def settle(handle: WorkflowHandle[Any, Any], within: float = 60) -> None:
    """Poll the history until nothing is in flight or due (see `_idle`)."""
    async with asyncio.timeout(within):
        while not await _idle(handle):  # noqa: ASYNC110 (a history to read, not an event)
            await asyncio.sleep(0.05)


_ACTIVITY_ENDS = {
    _E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    _E.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    _E.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    _E.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}
_TASK_ENDS = {
    _E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    _E.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    _E.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
}


async def _idle(handle: WorkflowHandle[Any, Any]) -> bool:
    open_activities: set[int] = set()
    task_due = False
    async for event in handle.fetch_history_events():
        kind = event.event_type
        if kind == _E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            open_activities.add(event.event_id)
        elif kind in _ACTIVITY_ENDS:
            ended = getattr(event, _ACTIVITY_ENDS[kind]).scheduled_event_id
            open_activities.discard(ended)
        elif kind in _TASK_ENDS:
            task_due = False
        elif kind in (
            _E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
            _E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
        ):
            task_due = True
    return not open_activities and not task_due


@dataclass(frozen=True)
class PerStep:
    step_type: str
    n: int
    one: Outcome
    many: Outcome
    per_step: Counts  # (many - one) / (n - 1)
    fixed: Counts  # one - per_step: the enrollment's own cost around its only step

    def as_dict(self) -> dict[str, Any]:
        return {
            "step_type": self.step_type,
            "n": self.n,
            "per_step": self.per_step.as_dict(),
            "fixed": self.fixed.as_dict(),
            "one_step": self.one.counts.as_dict(),
            "n_steps": self.many.counts.as_dict(),
            "expected": self.one.expected and self.many.expected,
        }


async def histories(options: Options) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nurture-history-") as tmp:
        root = Path(tmp)
        log(f"starting PostgreSQL and the time-skipping test server under {root}")
        async with embedded_postgres(root) as (database_url, _):
            await upgrade_async(database_url)
            engine = create_engine(database_url)
            try:
                async with await WorkflowEnvironment.start_time_skipping(
                    data_converter=pydantic_data_converter,
                    test_server_existing_path=find_binary("temporal-test-server"),
                ) as env:
                    await ensure_search_attributes(env.client, env.client.namespace)
                    return await _run_histories(options, env, session_factory(engine))
            finally:
                await engine.dispose()


async def _run_histories(
    options: Options, env: WorkflowEnvironment, sessions: SessionFactory
) -> dict[str, Any]:
    from worker import build_worker  # the checkout's own worker, imported once the path is set

    bench = HistoryBench(env, sessions, options.histories_dir)
    seeds: list[Outcome] = []
    per_step: list[PerStep] = []
    async with build_worker(env.client, sessions, TASK_QUEUE):
        for scenario in seed_scenarios():
            if options.wants(scenario.definition["key"]):
                log(f"  {scenario.name}")
                seeds.append(await bench.run(scenario))
        for step_type in STEP_TYPES:
            if not options.wants(step_type):
                continue
            log(f"  1 and {options.steps} x {step_type}")
            short, long = step_scenarios(step_type, options.steps)
            one, many = await bench.run(short), await bench.run(long)
            per = many.counts.minus(one.counts).divided(options.steps - 1)
            per_step.append(
                PerStep(step_type, options.steps, one, many, per, one.counts.minus(per))
            )
    return {
        "server": "temporal-test-server (time-skipping)",
        "scenarios": [o.as_dict() for o in seeds],
        "per_step": [p.as_dict() for p in per_step],
        "synthetic": [o.as_dict() for p in per_step for o in (p.one, p.many)],
        "unexpected": [o.scenario for o in seeds if not o.expected]
        + [o.scenario for p in per_step for o in (p.one, p.many) if not o.expected],
    }


# --- CPU per enrollment --------------------------------------------------------------------------


def cpu_journey() -> dict[str, Any]:
    """benchmark-welcome with a 1-second wait (and an API trigger): welcome, wait, branch,
    follow-up, for a contact who does not click."""
    definition = example("benchmark-welcome")
    definition["key"] = "bench-cpu-welcome"
    definition["name"] = "Benchmark: welcome, 1 s wait"
    definition["trigger"] = {"type": "api"}
    definition["steps"]["wait_1d"]["duration"] = "1s"
    return definition


async def cpu(options: Options) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nurture-history-cpu-") as tmp:
        root = Path(tmp)
        log(f"starting PostgreSQL and the Temporal dev server under {root}")
        async with embedded_postgres(root) as (database_url, postgres_pid):
            await upgrade_async(database_url)
            engine = create_engine(database_url)
            try:
                async with dev_server(root) as (env, temporal_pid):
                    return await _run_cpu(
                        options,
                        root,
                        database_url,
                        session_factory(engine),
                        env.client,
                        temporal_pid,
                        postgres_pid,
                    )
            finally:
                await engine.dispose()


async def _run_cpu(
    options: Options,
    root: Path,
    database_url: str,
    sessions: SessionFactory,
    client: Client,
    temporal_pid: int,
    postgres_pid: int,
) -> dict[str, Any]:
    definition = cpu_journey()
    journey_id = await publish_definition(sessions, definition)
    n, warmup, rounds = options.enrollments, options.warmup, options.rounds
    contacts = await make_contacts(sessions, warmup + rounds * n, "cpu")
    enroll_options = EnrollmentOptions(task_queue=TASK_QUEUE)
    key = definition["key"]

    async def enroll_one(contact_id: uuid.UUID) -> None:
        await enroll(sessions, client, enroll_options, key, contact_id)

    address = client.service_client.config.target_host
    async with worker_process(root, database_url, address, TASK_QUEUE) as worker_pid:
        meter = CpuMeter(
            [
                Component("worker", psutil.Process(worker_pid), tree=False),
                Component("temporal", psutil.Process(temporal_pid), tree=False),
                Component("postgres", psutil.Process(postgres_pid), tree=True),
                Component("bench", psutil.Process(), tree=False),
            ]
        )
        await asyncio.sleep(2)
        before, began = meter.snapshot(), time.perf_counter()
        await asyncio.sleep(5)
        idle = {
            name: round(spent / (time.perf_counter() - began), 4)
            for name, spent in CpuMeter.spent(before, meter.snapshot()).items()
        }
        log(f"  idle CPU seconds per second: {idle}")

        done = 0

        async def batch(items: Sequence[uuid.UUID]) -> tuple[float, float, int]:
            nonlocal done
            began = time.perf_counter()
            timed = await run_pool(items, options.concurrency, enroll_one)
            if timed.errors:
                raise RuntimeError(f"{len(timed.errors)} enrollments failed: {timed.errors[:3]}")
            done += timed.count
            await wait_for_count(sessions, journey_id, "completed", done, within=120 + n / 5)
            return timed.seconds, time.perf_counter() - began, timed.count

        log(f"  warm-up: {warmup} enrollments")
        await batch(contacts[:warmup])
        results: list[dict[str, Any]] = []
        per_round: list[dict[str, float]] = []
        for r in range(rounds):
            items = contacts[warmup + r * n : warmup + (r + 1) * n]
            before = meter.snapshot()
            enroll_seconds, seconds, count = await batch(items)
            spent = CpuMeter.spent(before, meter.snapshot())
            per = {name: round(1000 * s / count, 2) for name, s in spent.items()}
            per_round.append(per)
            log(
                f"  round {r + 1}: {count} completed in {seconds:.1f} s "
                f"(enrolled in {enroll_seconds:.1f} s); CPU ms per enrollment {per}"
            )
            results.append(
                {
                    "enrollments": count,
                    "seconds": round(seconds, 2),
                    "enroll_seconds": round(enroll_seconds, 2),
                    "cpu_ms_per_enrollment": per,
                }
            )
        completed = await count_enrollments(sessions, journey_id, "completed")
        # One timed enrollment's history as the dev server kept it.
        sample = await fetch_runs(client, enrollment_workflow_id(key, contacts[-1]))
        sample_counts, sample_kinds = count_history(sample)

    def median(name: str) -> float:
        return round(statistics.median(per[name] for per in per_round), 2)

    names = ["worker", "temporal", "postgres", "bench", "other"]
    return {
        "server": "temporal server start-dev (pip binary, SQLite file, WAL)",
        "journey": definition,
        "path": ["welcome", "wait_1d (1 s)", "clicked_purchase", "follow_up"],
        "enrollments_per_round": n,
        "rounds": results,
        "warmup": warmup,
        "concurrency": options.concurrency,
        "completed": completed,
        "idle_cpu_seconds_per_second": idle,
        "median_cpu_ms_per_enrollment": {name: median(name) for name in names},
        "worker_plus_server_ms": round(median("worker") + median("temporal"), 2),
        "sample_history": {"counts": sample_counts.as_dict(), "event_types": sample_kinds},
    }


# --- report --------------------------------------------------------------------------------------

_COLUMNS = (
    ("events", "events"),
    ("WFTs", "workflow_tasks"),
    ("acts", "activities"),
    ("act tries", "activity_attempts"),
    ("LA", "local_activities"),
    ("LA WFTs", "local_activity_wfts"),
    ("timers", "timers"),
    ("signals", "signals"),
    ("upserts", "upserts"),
    ("CAN", "continue_as_new"),
    ("actions", "billable_actions"),
)


def _row(label: str, width: int, counts: dict[str, float], extra: str = "") -> str:
    cells = "".join(f"{_fmt(counts[key]):>{max(len(h) + 1, 7)}}" for h, key in _COLUMNS)
    return f"{label:<{width}}{cells}{extra}"


def _header(label: str, width: int) -> str:
    return f"{label:<{width}}" + "".join(f"{h:>{max(len(h) + 1, 7)}}" for h, _ in _COLUMNS)


def _fmt(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.2f}"


def report(result: dict[str, Any]) -> str:
    lines = [f"Temporal work per enrollment, {result['code']['describe']} ({result['date']})"]
    history = result.get("history")
    if history:
        width = 52
        lines += ["", "Per scenario (one enrollment, all its runs):", _header("scenario", width)]
        for o in history["scenarios"]:
            mark = "" if o["expected"] else "   UNEXPECTED PATH"
            label = f"{o['scenario']} [{len(o['path'])} steps]"
            lines.append(_row(label, width, o["counts"], mark))
        lines += [
            "",
            f"Per step, from journeys of 1 and {history['per_step'][0]['n'] if history['per_step'] else '-'} "
            "steps of one type ((N-step journey - 1-step journey) / (N - 1)):",
            _header("step type", width),
        ]
        for p in history["per_step"]:
            mark = "" if p["expected"] else "   UNEXPECTED PATH"
            lines.append(_row(p["step_type"], width, p["per_step"], mark))
        lines += ["", "Fixed per enrollment (the 1-step journey minus its step):"]
        lines.append(_header("from the journey of", width))
        for p in history["per_step"]:
            lines.append(_row(f"1 x {p['step_type']}", width, p["fixed"]))
        lines += [
            "",
            "WFTs: WorkflowTaskCompleted. acts: ActivityTaskScheduled; act tries: their attempts. "
            "LA: local-activity markers; LA WFTs: tasks that recorded any. CAN: continue-as-new. "
            "actions: Temporal Cloud billable actions, estimated (docs.temporal.io/cloud/actions).",
        ]
        for name in history["unexpected"]:
            lines.append(f"PROBLEM: {name} did not take the expected path")
    cpu_result = result.get("cpu")
    if cpu_result:
        median = cpu_result["median_cpu_ms_per_enrollment"]
        lines += [
            "",
            f"CPU per enrollment (dev server, worker process; {cpu_result['rounds'][0]['enrollments']}"
            f" enrollments x {len(cpu_result['rounds'])} rounds, concurrency "
            f"{cpu_result['concurrency']}; path {' -> '.join(cpu_result['path'])}):",
        ]
        for i, r in enumerate(cpu_result["rounds"], 1):
            per = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_ms_per_enrollment"].items())
            lines.append(
                f"  round {i}: {r['enrollments']} completed in {r['seconds']:.1f} s; ms: {per}"
            )
        lines.append(
            f"  median: worker {median['worker']:.1f} ms + server {median['temporal']:.1f} ms "
            f"= {cpu_result['worker_plus_server_ms']:.1f} ms per enrollment "
            f"(Postgres {median['postgres']:.1f}, enrolling process {median['bench']:.1f}, "
            f"other {median['other']:.1f}); idle CPU/s {cpu_result['idle_cpu_seconds_per_second']}"
        )
        sample = cpu_result["sample_history"]["counts"]
        lines.append(
            f"  one enrollment's history on the dev server: {_fmt(sample['events'])} events, "
            f"{_fmt(sample['workflow_tasks'])} WFTs, {_fmt(sample['activities'])} activities, "
            f"{_fmt(sample['local_activities'])} LA, {_fmt(sample['timers'])} timers, "
            f"{_fmt(sample['upserts'])} upserts, ~{_fmt(sample['billable_actions'])} actions"
        )
    return "\n".join(lines)


# --- entry point ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    steps: int
    only: tuple[str, ...]  # journey keys or step types; empty: all
    histories: bool
    histories_dir: Path | None
    cpu: bool
    enrollments: int
    rounds: int
    warmup: int
    concurrency: int
    json_path: Path | None

    def wants(self, name: str) -> bool:
        return not self.only or name in self.only


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=30
        )
    except OSError:
        return ""
    return done.stdout.strip()


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the engine's files differ from it."""
    commit = _git("rev-parse", "HEAD")
    changed = [
        line[3:]
        for line in _git(
            "status", "--porcelain", "--", "workflows", "activities", "worker.py"
        ).splitlines()
        if line.strip()
    ]
    short = commit[:7] or "unknown"
    return {
        "commit": commit,
        "engine_files_changed": changed,
        "describe": f"commit {short}" + (" + uncommitted engine changes" if changed else ""),
        "path": str(REPO),
    }


async def main_async(options: Options) -> dict[str, Any]:
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "code": code_version(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "temporalio": package_version("temporalio"),
        },
    }
    began = time.monotonic()
    if options.histories:
        result["history"] = await histories(options)
    if options.cpu:
        result["cpu"] = await cpu(options)
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    return result


def parse(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.history",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=int, default=10, help="N, the steps of the longer synthetic journeys (10)"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated seed journey keys and step types to run (default: all)",
    )
    parser.add_argument("--json", type=Path, dest="json_path", help="write the figures here")
    parser.add_argument(
        "--save-histories", type=Path, help="write every history read (JSON) into this directory"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="also measure CPU per enrollment on the dev server"
    )
    parser.add_argument(
        "--cpu-only", action="store_true", help="only the CPU measurement, no histories"
    )
    parser.add_argument(
        "--enrollments", type=int, default=300, help="CPU mode: enrollments per round (300)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="CPU mode: timed rounds (3)")
    parser.add_argument("--warmup", type=int, default=30, help="CPU mode: untimed first (30)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="CPU mode: enrollments in flight (16)"
    )
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    if args.enrollments < 1 or args.rounds < 1:
        parser.error("--enrollments and --rounds must be at least 1")
    known = {s.definition["key"] for s in seed_scenarios()} | set(STEP_TYPES)
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    if set(only) - known:
        parser.error(f"--only takes some of: {', '.join(sorted(known))}")
    return Options(
        steps=args.steps,
        only=only,
        histories=not args.cpu_only,
        histories_dir=args.save_histories,
        cpu=args.cpu or args.cpu_only,
        enrollments=args.enrollments,
        rounds=args.rounds,
        warmup=args.warmup,
        concurrency=args.concurrency,
        json_path=args.json_path,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    result = asyncio.run(main_async(options))
    print(report(result))
    if options.json_path is not None:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nJSON: {options.json_path}")
    unexpected = (result.get("history") or {}).get("unexpected") or []
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
