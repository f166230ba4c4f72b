"""Run a prepared simulation: the real enrollment workflow, in virtual time, on stand-ins.

Each call starts its own time-skipping test server (the pip-installed binary, about 0.1 s to
start): its clock starts at the real "now", so a wait until a date behaves as it would for a
contact entering today, and nothing one simulation does can leak into another. One worker on
a task queue of its own runs `JourneyEnrollment` (the production workflow class) and
`SimulatedBehaviour` with the stand-in activities (`standins.py`). Each contact's script is
started before its enrollment, so it hears of every send; then the server skips time freely
until every enrollment has ended or reached the horizon.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import JsonValue
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from nurture.binaries import find_binary
from nurture.content.isolation import RENDER_PROCESSES, render_isolated
from nurture.content.rendering import TemplateContent
from nurture.contracts import (
    ENROLLMENT_WORKFLOW,
    ContactFacts,
    EnrollmentEvent,
    EnrollmentInput,
    EnrollmentProgress,
    EnrollmentResult,
)
from nurture.db.models import Contact
from nurture.errors import Invalid
from nurture.journeys.definition import BranchStep, JourneyDefinition
from nurture.owners import Team
from nurture.sending.rules import SendRules
from nurture.sending.throttle import CHANNELS, send_task_queue
from nurture.simulation.behaviour import (
    BEHAVIOUR_WORKFLOW,
    HORIZON_REASON,
    BehaviourInput,
    BehaviourResult,
    Delivery,
    ScriptedAction,
    SimulatedBehaviour,
    scripted_event,
)
from nurture.simulation.report import (
    SimulatedBehaviourOutcome,
    SimulatedChange,
    SimulatedContactReport,
    SimulatedContactState,
    SimulatedGoal,
    SimulatedHold,
    SimulatedLink,
    SimulatedMessage,
    SimulatedStep,
    SimulatedWebhook,
    SimulationReport,
    decision_of,
    offset,
)
from nurture.simulation.script import SimulationBehaviour
from nurture.simulation.standins import (
    SEND_ACTIVITIES,
    SimulatedContact,
    World,
    activity_name,
    stand_in_activities,
)
from nurture.tracing import ensure_search_attributes
from workflows.enrollment import JourneyEnrollment

# A simulation that has not finished after this much wall-clock time is given up (422).
WALL_SECONDS = 120.0
# Simulations running at once in one process (each has its own test server and worker).
CONCURRENT_SIMULATIONS = 2
_SLOTS = threading.BoundedSemaphore(CONCURRENT_SIMULATIONS)

# How far a facts read may trail the step that used it: within one workflow task the virtual
# clock advances with the wall clock (the server only skips while nothing is in flight).
_SAME_MOMENT = timedelta(seconds=1)


@dataclass
class PreparedContact:
    """A test contact ready to run: its in-memory copy and what the database said of it."""

    label: str
    contact: Contact
    lists: list[str]
    behaviours: list[SimulationBehaviour]
    reference: str | None = None
    suppressed: dict[str, str] = field(default_factory=dict)
    segments: set[str] = field(default_factory=set)
    refused: str | None = None  # entry refused before any workflow (exclusion segment)
    push_tokens: list[str] = field(default_factory=list)


@dataclass
class Plan:
    journey_key: str
    version: str  # "draft" or the version number, for the report
    version_number: int  # what the workflow is told (0 for a draft)
    definition: JourneyDefinition
    templates: dict[tuple[str, str], TemplateContent]
    list_keys: set[str]
    existing_segments: set[str]
    contacts: list[PreparedContact]
    horizon: timedelta
    public_base_url: str
    include_html: bool = False
    send_rules: SendRules = field(default_factory=SendRules)
    teams: dict[str, Team] = field(default_factory=dict)  # those assign_owner steps name
    webhooks: dict[str, tuple[int, JsonValue]] = field(default_factory=dict)  # step: answer


class SimulationTooLong(Invalid):
    pass


async def run_simulation(plan: Plan, wall_seconds: float = WALL_SECONDS) -> SimulationReport:
    """Run `plan` in a thread with an event loop of its own: the worker's work is CPU-bound
    Python, which on the caller's loop (the API's) would hold up every other request for as
    long as the simulation runs."""
    return await asyncio.to_thread(_in_thread, plan, wall_seconds)


def _runtime() -> Runtime:
    """The Temporal runtime of simulations: the default one would print a warning on every
    run (the test server does not advertise a capability workers ask for), into the output
    of `nurture simulate` too. Errors are still printed."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        if _RUNTIME is None:
            quiet = TelemetryFilter(core_level="ERROR", other_level="ERROR")
            _RUNTIME = Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=quiet)))
        return _RUNTIME


_RUNTIME: Runtime | None = None
_RUNTIME_LOCK = threading.Lock()


def _in_thread(plan: Plan, wall_seconds: float) -> SimulationReport:
    with _SLOTS:
        return asyncio.run(_simulate(plan, wall_seconds))


async def _simulate(plan: Plan, wall_seconds: float) -> SimulationReport:
    began = time.perf_counter()
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=find_binary("temporal-test-server"),
        runtime=_runtime(),
    )
    try:
        await ensure_search_attributes(env.client, env.client.namespace)
        world, start, results, deliveries = await _run(env, plan, wall_seconds)
    finally:
        await env.shutdown()
    reports = [
        _contact_report(plan, world, start, simulated, results.get(key), deliveries.get(key))
        for key, simulated in _in_order(world)
    ]
    return SimulationReport(
        journey=plan.journey_key,
        version=plan.version,
        started_at=start,
        horizon=offset(start, start + plan.horizon),
        wall_seconds=round(time.perf_counter() - began, 3),
        contacts=reports,
    )


def _in_order(world: World) -> list[tuple[str, SimulatedContact]]:
    return sorted(((c.key, c) for c in world.contacts.values()), key=lambda kc: int(kc[0][1:]))


async def _run(
    env: WorkflowEnvironment, plan: Plan, wall_seconds: float
) -> tuple[World, datetime, dict[str, EnrollmentResult], dict[str, BehaviourResult]]:
    client = env.client
    run_id = uuid.uuid4().hex[:12]
    task_queue = f"simulation-{run_id}"
    world = World(
        journey_key=plan.journey_key,
        templates=plan.templates,
        list_keys=plan.list_keys,
        existing_segments=plan.existing_segments,
        public_base_url=plan.public_base_url,
        client=client,
        clock=env.get_current_time,
        send_rules=plan.send_rules,
        teams=plan.teams,
        webhook_responses=plan.webhooks,
        contact_count=len(plan.contacts),
    )
    for i, prepared in enumerate(plan.contacts):
        enrollment_id = uuid.uuid4()
        world.contacts[enrollment_id] = SimulatedContact(
            key=f"c{i}",
            contact=prepared.contact,
            lists=sorted(prepared.lists),
            enrollment_id=enrollment_id,
            workflow_id=f"simulation:{run_id}:{i}",
            behaviour_workflow_id=f"simulation:{run_id}:{i}:behaviour",
            behaviours=prepared.behaviours,
            label=prepared.label,
            reference=prepared.reference,
            suppressed=prepared.suppressed,
            segments=prepared.segments,
            push_tokens=prepared.push_tokens,
            index=i,
        )
    entering = [
        simulated
        for simulated, prepared in zip(world.contacts.values(), plan.contacts, strict=True)
        if prepared.refused is None
    ]
    activities = stand_in_activities(world)
    # The sends go through each channel's send queue, as in production (unthrottled here:
    # a simulated send costs no provider anything).
    sends = [fn for fn in activities if activity_name(fn) in SEND_ACTIVITIES]
    send_workers = [
        Worker(client, task_queue=send_task_queue(task_queue, channel), activities=sends)
        for channel in CHANNELS
    ]
    async with contextlib.AsyncExitStack() as stack:
        for send_worker in send_workers:
            await stack.enter_async_context(send_worker)
        return await _run_on(env, plan, wall_seconds, world, task_queue, entering, activities)


async def _run_on(
    env: WorkflowEnvironment,
    plan: Plan,
    wall_seconds: float,
    world: World,
    task_queue: str,
    entering: list[SimulatedContact],
    activities: list[Any],
) -> tuple[World, datetime, dict[str, EnrollmentResult], dict[str, BehaviourResult]]:
    client = env.client
    results: dict[str, EnrollmentResult] = {}
    deliveries: dict[str, BehaviourResult] = {}
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[JourneyEnrollment, SimulatedBehaviour],
        activities=activities,
        # The workflow code runs as the production worker runs it, minus the sandbox: it only
        # refuses non-deterministic calls (which the replay test and production catch), and it
        # costs half the CPU of a simulation (re-importing modules for each workflow: 50
        # contacts of a 180-day journey took 12.1 s with it, 6.7 s without).
        workflow_runner=UnsandboxedWorkflowRunner(),
        # Every workflow stays cached: an evicted one would be replayed from its history.
        max_cached_workflows=2 * len(entering) + 10,
    ):
        # The virtual clock runs with the wall clock until time skips: entry is now, once the
        # worker and the render processes are ready (a render process starting during the
        # first send would add its start-up to every offset). Each script starts before its
        # enrollment, so it hears every send.
        if plan.templates:
            warm_up = TemplateContent(key="warm-up", channel="email", version=0, text="ok")
            await asyncio.gather(*(render_isolated(warm_up, {}) for _ in range(RENDER_PROCESSES)))
        start = await env.get_current_time()
        await asyncio.gather(*(_start(client, plan, task_queue, start, s) for s in entering))
        try:
            async with asyncio.timeout(wall_seconds):
                async with env.time_skipping_unlocked():  # type: ignore[attr-defined]
                    ended = await asyncio.gather(
                        *(_result(client, s.workflow_id, EnrollmentResult) for s in entering)
                    )
                    # Each script ends as its enrollment does (told by `finish_enrollment`).
                    played = await asyncio.gather(
                        *(
                            _result(client, s.behaviour_workflow_id, BehaviourResult)
                            for s in entering
                        )
                    )
                results = {s.key: r for s, r in zip(entering, ended, strict=True)}
                deliveries = {s.key: r for s, r in zip(entering, played, strict=True)}
        except TimeoutError:
            raise SimulationTooLong(
                f"the simulation did not finish within {wall_seconds:.0f} s: simulate fewer "
                "contacts at once, or a shorter horizon"
            ) from None
    return world, start, results, deliveries


async def _start(
    client: Client, plan: Plan, task_queue: str, start: datetime, simulated: SimulatedContact
) -> None:
    actions = [_action(i, b) for i, b in enumerate(simulated.behaviours)]
    await client.start_workflow(
        BEHAVIOUR_WORKFLOW,
        BehaviourInput(
            contact_key=simulated.key,
            enrollment_workflow_id=simulated.workflow_id,
            start=start,
            horizon=plan.horizon,
            actions=actions,
        ),
        id=simulated.behaviour_workflow_id,
        task_queue=task_queue,
    )
    await client.start_workflow(
        ENROLLMENT_WORKFLOW,
        EnrollmentInput(
            enrollment_id=simulated.enrollment_id,
            contact_id=simulated.contact.id,
            journey_key=plan.journey_key,
            version=plan.version_number,
            definition=plan.definition,
        ),
        id=simulated.workflow_id,
        task_queue=task_queue,
        static_summary=f"simulation of {plan.journey_key} ({plan.version}) for {simulated.label}",
    )


async def _result(client: Client, workflow_id: str, result_type: type[Any]) -> Any:
    handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(
        workflow_id, result_type=result_type
    )
    while True:
        try:
            return await handle.result()
        except RuntimeError as err:
            # The test server ends a long poll after ~20 s without an event; ask again (the
            # caller's wall-clock limit bounds the whole).
            if "No completion event found" not in str(err):
                raise
        except WorkflowFailureError as err:
            return await _failed(handle, result_type, err)


async def _failed(handle: WorkflowHandle[Any, Any], result_type: type[Any], err: Exception) -> Any:
    """A workflow that failed (an interpreter error, not a journey's outcome): reported as
    failed, with the path it had taken, rather than failing the whole simulation."""
    cause = err.__cause__ or err
    message = str(getattr(cause, "message", None) or cause)[:500]
    if result_type is BehaviourResult:
        return BehaviourResult(deliveries=[])
    try:
        progress = await handle.query("progress", result_type=EnrollmentProgress)
        path = progress.path
    except Exception:  # the query cannot be answered: the path is unknown
        path = []
    return EnrollmentResult(status="failed", reason=message, path=path)


def _contact_report(
    plan: Plan,
    world: World,
    start: datetime,
    simulated: SimulatedContact,
    result: EnrollmentResult | None,
    played: BehaviourResult | None,
) -> SimulatedContactReport:
    prepared = plan.contacts[int(simulated.key[1:])]
    deliveries = played.deliveries if played else []
    contact = simulated.contact
    at_end = SimulatedContactState(
        fields=dict(contact.fields), tags=list(contact.tags), lists=simulated.lists
    )
    behaviour = [
        _behaviour_out(start, simulated, b, d)
        for b, d in zip(
            simulated.behaviours,
            deliveries
            or [Delivery(index=i, due_at=None) for i in range(len(simulated.behaviours))],
            strict=True,
        )
    ]
    changes = [
        SimulatedChange(at=c.at, offset=offset(start, c.at), by=c.by, changed=c.changed)
        for c in simulated.changes
    ]
    goal_name = plan.definition.goal.name if plan.definition.goal else None
    if result is None:  # refused before any workflow
        return SimulatedContactReport(
            label=simulated.label,
            contact=simulated.reference,
            status="not_enrolled",
            reason=prepared.refused,
            entered_at=start,
            ended_at=start,
            duration="0s",
            path=[],
            sends=0,
            goal=SimulatedGoal(name=goal_name, met=False) if plan.definition.goal else None,
            behaviour=behaviour,
            changes=changes,
            contact_at_end=at_end,
        )
    finished = simulated.finished
    ended_at = finished.at if finished is not None else None
    status: str = result.status
    reason = result.reason
    if reason == HORIZON_REASON:
        status, ended_at = "running", None
        reason = f"still at {result.path[-1].step} at the horizon" if result.path else reason
    path = _path(plan, start, simulated, result, deliveries)
    goal = None
    if plan.definition.goal is not None:
        met = reason in ("goal_met", "goal_already_met")
        goal = SimulatedGoal(
            name=goal_name,
            met=met,
            at=ended_at if met else None,
            offset=offset(start, ended_at) if met and ended_at else None,
        )
    return SimulatedContactReport(
        label=simulated.label,
        contact=simulated.reference,
        status=status,
        reason=reason,
        entered_at=start,
        ended_at=ended_at,
        duration=offset(start, ended_at) if ended_at else None,
        path=path,
        sends=sum(1 for s in simulated.sends.values() if s.status == "sent"),
        send_holds=dict(Counter(hold.action for hold in simulated.holds)),
        goal=goal,
        behaviour=behaviour,
        changes=changes,
        contact_at_end=at_end,
    )


def _behaviour_out(
    start: datetime, simulated: SimulatedContact, behaviour: SimulationBehaviour, delivery: Delivery
) -> SimulatedBehaviourOutcome:
    return SimulatedBehaviourOutcome(
        behaviour=behaviour.describe(),
        due_at=delivery.due_at,
        offset=offset(start, delivery.due_at) if delivery.due_at else None,
        delivered=delivery.delivered_at is not None,
        note=delivery.note or _missing_link(simulated, behaviour),
    )


def _missing_link(simulated: SimulatedContact, behaviour: SimulationBehaviour) -> str | None:
    """A scripted click on a link the message does not have: delivered as scripted, but no
    recipient could make it (a link is named by `data-link`, else by its URL)."""
    if behaviour.clicks is None or behaviour.link is None:
        return None
    sent = next(
        (
            s
            for s in simulated.sends.values()
            if (s.step, s.visit) == (behaviour.clicks, behaviour.visit) and s.status == "sent"
        ),
        None,
    )
    if sent is None or behaviour.link in {link.name for link in sent.links}:
        return None
    names = ", ".join(link.name for link in sent.links) or "none"
    return (
        f"{behaviour.clicks} has no link named {behaviour.link!r} (its tracked links: {names}): "
        'no recipient could make this click; name the link with data-link="..." in the template'
    )


def _path(
    plan: Plan,
    start: datetime,
    simulated: SimulatedContact,
    result: EnrollmentResult,
    deliveries: Sequence[Delivery],
) -> list[SimulatedStep]:
    sends = {f"{s.step}:{s.visit}": s for s in simulated.sends.values()}
    hooks = {f"{h.step}:{h.visit}": h for h in simulated.webhooks.values()}
    changes = {(c.by, c.at): c for c in simulated.changes}
    visits: dict[str, int] = {}
    steps: list[SimulatedStep] = []
    for entry in result.path:
        visits[entry.step] = entry.visit
        out = SimulatedStep(
            step=entry.step,
            type=entry.type,
            visit=entry.visit,
            entered_at=entry.entered_at,
            offset=offset(start, entry.entered_at),
            left_at=entry.left_at,
            outcome=entry.outcome,
        )
        if entry.type in ("wait", "wait_for") and entry.left_at is not None:
            out.waited = offset(entry.entered_at, entry.left_at, rounded=True)
        send = sends.get(f"{entry.step}:{entry.visit}")
        if send is not None:
            out.message = SimulatedMessage(
                channel=send.channel,
                template=send.template,
                template_version=send.template_version,
                status=send.status,
                reason=send.reason,
                to=send.to,
                subject=send.subject,
                text=send.text,
                html=send.html if plan.include_html else None,
                links=[SimulatedLink(name=link.name, url=link.url) for link in send.links],
                data=send.data,
            )
        out.holds = [
            SimulatedHold(
                at=hold.at,
                offset=offset(start, hold.at),
                rule=hold.rule,
                action=hold.action,
                detail=hold.detail,
                until=hold.until,
            )
            for hold in simulated.holds
            if (hold.step, hold.visit) == (entry.step, entry.visit)
        ]
        hook = hooks.get(f"{entry.step}:{entry.visit}")
        if hook is not None:
            out.webhook = SimulatedWebhook(
                would_call=f"{hook.method} {hook.url}",
                headers=hook.headers,
                body=hook.body,
                response_status=hook.status,
                attempts=hook.attempts,
                saved=hook.saved,
            )
        change = changes.get((f"step {entry.step}", entry.entered_at))
        if change is not None:
            out.changed = change.changed
        step = plan.definition.steps.get(entry.step)
        if isinstance(step, BranchStep):
            facts = _facts_at(simulated, entry.entered_at)
            if facts is not None:
                events = _events_before(simulated, deliveries, entry.entered_at)
                out.decision = decision_of(step, entry, facts, events, dict(visits))
        steps.append(out)
    return steps


def _facts_at(simulated: SimulatedContact, moment: datetime) -> ContactFacts | None:
    """The facts the workflow held at `moment`: the last it was given by then."""
    seen = [facts for at, facts in simulated.facts_seen if at <= moment + _SAME_MOMENT]
    return seen[-1] if seen else None


def _events_before(
    simulated: SimulatedContact, deliveries: Sequence[Delivery], moment: datetime
) -> list[EnrollmentEvent]:
    events = []
    for delivery in sorted(
        (d for d in deliveries if d.delivered_at is not None and d.delivered_at <= moment),
        key=lambda d: (d.delivered_at, d.index),
    ):
        behaviour = simulated.behaviours[delivery.index]
        if behaviour.kind in ("opens", "clicks", "event"):
            assert delivery.due_at is not None
            events.append(scripted_event(_action(delivery.index, behaviour), delivery.due_at))
    return events


def _action(index: int, b: SimulationBehaviour) -> ScriptedAction:
    return ScriptedAction(
        index=index,
        kind=b.kind,
        delay=b.delay,
        message_step=b.message_step,
        visit=b.visit,
        after_send=b.after_send,
        link=b.link,
        event=b.event,
        properties=b.properties,
    )
