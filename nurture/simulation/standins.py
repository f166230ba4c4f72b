"""Stand-in activities: what the enrollment workflow's activities do, on an in-memory contact.

The simulation runs the real `JourneyEnrollment` workflow with these registered under the real
activity names, so a simulated journey takes every decision the real interpreter takes, while
nothing reaches Postgres, a channel or another enrollment. Each stand-in class mirrors one real
activities class, method for method (`STAND_INS`); where the real activity's logic is a pure
function it is reused here (`apply_change`, `skip_reason`, `facts_of`, `message_context`,
the render processes), so what the gate, a change or a render decides is the same.

Adding an activity to the worker (a new step type, a send rule): add its stand-in method to
the class mirroring its activities class, or, when `JourneyEnrollment` never runs it, its name
to `OTHER_WORKFLOWS_ACTIVITIES`. `tests/test_simulation_standins.py` fails until one is done.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.contacts import apply_change
from activities.messaging import skip_reason
from nurture.audience.changes import diff, tag_changes
from nurture.content.isolation import render_isolated
from nurture.content.rendering import TemplateContent, TemplateRenderError, message_context
from nurture.contracts import (
    ContactChange,
    ContactFacts,
    EnrollmentFinished,
    ListChange,
    LoadContact,
    SendRequest,
    SendResult,
    StepEntered,
)
from nurture.db.models import Contact
from nurture.journeys.facts import facts_of
from nurture.simulation.behaviour import APPLY_BEHAVIOUR, AppliedBehaviour, SentNotice
from nurture.simulation.script import SimulationBehaviour
from nurture.tracking import tracked_links

# Activities the worker registers for its other workflows (BulkEnroll, SegmentWatch), which a
# simulation never runs.
OTHER_WORKFLOWS_ACTIVITIES = frozenset(
    {"open_run", "enroll_page", "sweep_segments", "send_weekly_review"}
)


@dataclass(frozen=True)
class TrackedLink:
    name: str
    url: str


@dataclass
class SendRecord:
    """One message the journey would have sent (or skipped, or failed to render)."""

    at: datetime
    step: str
    visit: int
    channel: str
    template: str
    status: str  # sent | skipped | failed
    reason: str | None = None
    to: str | None = None
    template_version: int | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    links: list[TrackedLink] = field(default_factory=list)


@dataclass
class ChangeRecord:
    """A change of the in-memory contact: by a journey step or by the script."""

    at: datetime
    by: str  # "step <id>" | "behaviour <n>"
    changed: dict[str, Any]


@dataclass
class SimulatedContact:
    """One test contact: its in-memory copy and everything that happened to it."""

    key: str
    contact: Contact  # never added to a session
    lists: list[str]
    enrollment_id: uuid.UUID
    workflow_id: str
    behaviour_workflow_id: str
    behaviours: list[SimulationBehaviour]
    label: str
    reference: str | None = None  # the existing contact it copies
    suppressed: dict[str, str] = field(default_factory=dict)  # channel -> reason
    segments: set[str] = field(default_factory=set)
    sends: dict[str, SendRecord] = field(default_factory=dict)  # by idempotency key
    facts_seen: list[tuple[datetime, ContactFacts]] = field(default_factory=list)
    changes: list[ChangeRecord] = field(default_factory=list)
    applied_operations: set[str] = field(default_factory=set)
    recorded: list[StepEntered] = field(default_factory=list)
    finished: EnrollmentFinished | None = None

    @property
    def watched_steps(self) -> set[str]:
        """Send steps whose messages the script opens or clicks, timed from their send."""
        return {b.message_step for b in self.behaviours if b.after_send and b.message_step}

    def facts(self, fields: Sequence[str] | None) -> ContactFacts:
        facts = facts_of(self.contact, self.lists)
        if fields is not None:
            wanted = set(fields)
            facts = facts.model_copy(
                update={"fields": {k: v for k, v in facts.fields.items() if k in wanted}}
            )
        return facts

    def snapshot(self) -> tuple[dict[str, Any], list[str], list[str]]:
        return dict(self.contact.fields), list(self.contact.tags), list(self.lists)

    def record_change(
        self, at: datetime, by: str, before: tuple[dict[str, Any], list[str], list[str]]
    ) -> None:
        fields, tags, lists = before
        changed: dict[str, Any] = {}
        if fields_changed := diff(fields, self.contact.fields):
            changed["fields"] = fields_changed
        changed.update(tag_changes(tags, self.contact.tags))
        if joined := [key for key in self.lists if key not in lists]:
            changed["lists_joined"] = joined
        if left := [key for key in lists if key not in self.lists]:
            changed["lists_left"] = left
        if changed:
            self.changes.append(ChangeRecord(at, by, changed))


@dataclass
class World:
    """The in-memory state one simulation's stand-ins read and write."""

    journey_key: str
    templates: dict[tuple[str, str], TemplateContent]
    list_keys: set[str]
    existing_segments: set[str]
    public_base_url: str
    contacts: dict[uuid.UUID, SimulatedContact] = field(default_factory=dict)  # by enrollment
    client: Client | None = None  # to tell behaviour workflows of sends
    clock: Callable[[], Awaitable[datetime]] | None = None  # the server's virtual time
    _keys: dict[str, SimulatedContact] = field(default_factory=dict)

    def of(self, enrollment_id: uuid.UUID | None) -> SimulatedContact:
        contact = self.contacts.get(enrollment_id) if enrollment_id is not None else None
        if contact is None:
            raise ApplicationError(
                f"no simulated enrollment {enrollment_id}", type="Unknown", non_retryable=True
            )
        return contact

    def by_key(self, key: str) -> SimulatedContact:
        """A contact by its key ("c<index>"), as the script workflow names it."""
        if len(self._keys) != len(self.contacts):
            self._keys = {c.key: c for c in self.contacts.values()}
        return self._keys[key]


def _step_time(progress: Sequence[StepEntered], step: str) -> datetime:
    """The virtual moment a step was entered: the workflow passes it with the progress."""
    for entered in reversed(progress):
        if entered.step == step:
            return entered.at
    return activity.info().current_attempt_scheduled_time


class SimulatedEnrollmentActivities:
    """Mirrors `activities.enrollment.EnrollmentActivities`."""

    def __init__(self, world: World) -> None:
        self._world = world

    @activity.defn
    async def load_contact(self, load: LoadContact) -> ContactFacts:
        contact = self._world.of(load.enrollment_id)
        facts = contact.facts(load.fields)
        assert self._world.clock is not None
        contact.facts_seen.append((await self._world.clock(), facts))
        return facts

    @activity.defn
    async def record_steps(self, entered: list[StepEntered]) -> None:
        if entered:
            self._world.of(entered[0].enrollment_id).recorded.extend(entered)

    @activity.defn
    async def finish_enrollment(self, finished: EnrollmentFinished) -> None:
        contact = self._world.of(finished.enrollment_id)
        contact.recorded.extend(finished.progress)
        contact.finished = finished
        # Its script ends now, while the clock is held by this activity: a script left waiting
        # for nothing would let the server skip to its execution timeout.
        assert self._world.client is not None
        with contextlib.suppress(RPCError):  # ended already (a retry of this activity)
            await self._world.client.get_workflow_handle(contact.behaviour_workflow_id).signal(
                "stop"
            )


class SimulatedMessagingActivities:
    """Mirrors `activities.messaging.MessagingActivities`: the send gate and the render, with
    nothing sent. Suppressions and exclusion segments were read when the simulation began."""

    def __init__(self, world: World) -> None:
        self._world = world

    @activity.defn
    async def send_message(self, request: SendRequest) -> SendResult:
        simulated = self._world.of(request.enrollment_id)
        message_id = uuid.uuid5(simulated.enrollment_id, request.idempotency_key)
        recorded = simulated.sends.get(request.idempotency_key)
        if recorded is not None:  # a retry: the first attempt's result, as in production
            return SendResult(message_id=message_id, status=recorded.status, reason=recorded.reason)
        simulated.recorded.extend(request.progress)
        visit = int(request.idempotency_key.rsplit(":", 1)[1])
        contact = simulated.contact
        record = SendRecord(
            at=_step_time(request.progress, request.step),
            step=request.step,
            visit=visit,
            channel=request.channel,
            template=request.template,
            status="skipped",
            to=contact.email if request.channel == "email" else contact.phone,
        )
        simulated.sends[request.idempotency_key] = record
        record.reason = self._gate(simulated, request)
        if record.reason is None:
            await self._render(simulated, request, message_id, record)
        if record.status == "sent" and request.step in simulated.watched_steps:
            assert self._world.client is not None
            assert self._world.clock is not None
            # Opens and clicks are timed from when the message left, as a recipient sees it.
            sent_at = await self._world.clock()
            await self._world.client.get_workflow_handle(simulated.behaviour_workflow_id).signal(
                "sent", SentNotice(step=request.step, visit=visit, at=sent_at)
            )
        return SendResult(message_id=message_id, status=record.status, reason=record.reason)

    def _gate(self, simulated: SimulatedContact, request: SendRequest) -> str | None:
        """Why the message would not reach a provider (`send_message`'s checks, in order)."""
        reason = skip_reason(simulated.contact, request.channel)
        if reason is None and request.channel in simulated.suppressed:
            reason = f"{request.channel}_{simulated.suppressed[request.channel]}"
        segment = request.exclusion_segment
        if reason is None and segment:
            if segment not in self._world.existing_segments:
                reason = f"exclusion segment {segment} missing"
            elif segment in simulated.segments:
                reason = f"in exclusion segment {segment}"
        return reason

    async def _render(
        self,
        simulated: SimulatedContact,
        request: SendRequest,
        message_id: uuid.UUID,
        record: SendRecord,
    ) -> None:
        content = self._world.templates.get((request.channel, request.template))
        if content is None:
            record.status, record.reason = (
                "failed",
                f"no {request.channel} template {request.template!r}",
            )
            return
        email = request.channel == "email"
        base = self._world.public_base_url.rstrip("/")
        context = message_context(
            simulated.contact,
            message_id=message_id,
            journey=request.journey_key,
            # Not a working link: a simulated message has no token to unsubscribe with.
            unsubscribe_url=f"{base}/v1/u/simulated" if email else None,
        )
        try:
            rendered = await render_isolated(content, context)
        except TemplateRenderError as err:
            record.status, record.reason = "failed", str(err)[:255]
            return
        record.status = "sent"
        record.template_version = rendered.version
        record.subject, record.text, record.html = rendered.subject, rendered.text, rendered.html
        if email and rendered.html is not None:
            record.links = [
                TrackedLink(name, url) for name, url in tracked_links(rendered.html, base)
            ]


class SimulatedContactActivities:
    """Mirrors `activities.contacts.ContactActivities`: the change, on the in-memory contact,
    at most once per operation key. Other journeys are not told (they are not simulated)."""

    def __init__(self, world: World) -> None:
        self._world = world

    @activity.defn
    async def update_contact(self, change: ContactChange) -> ContactFacts:
        simulated = self._world.of(change.enrollment_id)
        simulated.recorded.extend(change.progress)
        if change.operation_key not in simulated.applied_operations:
            before = simulated.snapshot()
            apply_change(simulated.contact, change)  # raises as the real one does
            simulated.applied_operations.add(change.operation_key)
            step = change.source.rsplit(":", 1)[-1]
            simulated.record_change(_step_time(change.progress, step), f"step {step}", before)
        return self._seen(simulated, change.fields, change.progress)

    @activity.defn
    async def change_list_membership(self, change: ListChange) -> ContactFacts:
        if change.list_key not in self._world.list_keys:
            raise ApplicationError(
                f"unknown list {change.list_key!r}", type="UnknownList", non_retryable=True
            )
        simulated = self._world.of(change.enrollment_id)
        simulated.recorded.extend(change.progress)
        before = simulated.snapshot()
        if change.member and change.list_key not in simulated.lists:
            simulated.lists = sorted([*simulated.lists, change.list_key])
        elif not change.member and change.list_key in simulated.lists:
            simulated.lists = [key for key in simulated.lists if key != change.list_key]
        step = change.source.rsplit(":", 1)[-1]
        simulated.record_change(_step_time(change.progress, step), f"step {step}", before)
        return self._seen(simulated, change.fields, change.progress)

    @staticmethod
    def _seen(
        simulated: SimulatedContact, fields: list[str] | None, progress: list[StepEntered]
    ) -> ContactFacts:
        facts = simulated.facts(fields)
        at = progress[-1].at if progress else activity.info().current_attempt_scheduled_time
        simulated.facts_seen.append((at, facts))
        return facts


class BehaviourActivities:
    """The script's own activity (not a stand-in): a scripted change of the in-memory contact."""

    def __init__(self, world: World) -> None:
        self._world = world

    @activity.defn(name=APPLY_BEHAVIOUR)
    async def apply_behaviour(self, applied: AppliedBehaviour) -> None:
        simulated = self._world.by_key(applied.contact_key)
        behaviour = simulated.behaviours[applied.index]
        before = simulated.snapshot()
        contact = simulated.contact
        if behaviour.kind == "change":
            # As a change through the API would: the same rules as a journey's change.
            change = ContactChange(
                operation_key=f"behaviour:{applied.index}",
                contact_id=contact.id,
                set=behaviour.set,
                unset=behaviour.unset,
                add_tags=behaviour.add_tags,
                remove_tags=behaviour.remove_tags,
            )
            apply_change(contact, change)
        elif behaviour.join_list and behaviour.join_list not in simulated.lists:
            simulated.lists = sorted([*simulated.lists, behaviour.join_list])
        elif behaviour.leave_list:
            simulated.lists = [key for key in simulated.lists if key != behaviour.leave_list]
        simulated.record_change(applied.at, f"behaviour {applied.index}", before)


# Each real activities class and the stand-in class that mirrors it, method for method.
STAND_INS: dict[str, type] = {
    "activities.enrollment.EnrollmentActivities": SimulatedEnrollmentActivities,
    "activities.messaging.MessagingActivities": SimulatedMessagingActivities,
    "activities.contacts.ContactActivities": SimulatedContactActivities,
}


def stand_in_activities(world: World) -> list[Callable[..., Any]]:
    """Every stand-in activity (each `@activity.defn` method of each stand-in class), bound to
    `world`, plus the script's own."""
    bound: list[Callable[..., Any]] = []
    for cls in [*STAND_INS.values(), BehaviourActivities]:
        instance = cls(world)
        for name in dir(cls):
            method = getattr(instance, name)
            if not name.startswith("_") and activity_name(method) is not None:
                bound.append(method)
    return bound


def activity_name(fn: Any) -> str | None:
    """The name an `@activity.defn` callable is registered under, or None for other callables."""
    definition = activity._Definition.from_callable(fn)
    return definition.name if definition is not None else None
