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

from pydantic import JsonValue
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.contacts import apply_change
from activities.messaging import skip_reason
from activities.outbound import WEBHOOK_REFUSED
from nurture.audience.changes import diff, tag_changes
from nurture.content.isolation import render_isolated
from nurture.content.rendering import TemplateContent, TemplateRenderError, message_context
from nurture.contracts import (
    ContactChange,
    ContactFacts,
    EnrollmentFinished,
    ListChange,
    LoadContact,
    OwnerChosen,
    OwnerRequest,
    PushRequest,
    PushResult,
    SendRequest,
    SendResult,
    StepEntered,
    WebhookCall,
    WebhookResult,
)
from nurture.db.models import Contact
from nurture.journeys.facts import facts_of
from nurture.outbound.webhooks import _RETRYABLE_4XX, IDEMPOTENCY_HEADER, pick, render_value
from nurture.owners import NoOwners, Team, owner_for_turn
from nurture.sending.gate import SEND, GatedSend, Verdict, before_caps, capped, rules_met
from nurture.sending.rules import SendRules
from nurture.simulation.behaviour import APPLY_BEHAVIOUR, AppliedBehaviour, SentNotice
from nurture.simulation.script import SimulationBehaviour
from nurture.tracking import tracked_links

# Activities the worker registers for its other workflows (BulkEnroll, SegmentWatch), which a
# simulation never runs.
OTHER_WORKFLOWS_ACTIVITIES = frozenset(
    {"open_run", "enroll_page", "sweep_segments", "send_weekly_review"}
)
# The activities the workflow runs on the per-channel send queues (`send_task_queue`).
SEND_ACTIVITIES = frozenset({"send_message", "send_push"})


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
    data: dict[str, Any] | None = None  # push


@dataclass
class HoldRecord:
    """A send rule's verdict on a simulated send other than "send"."""

    at: datetime
    step: str
    visit: int
    channel: str
    rule: str
    action: str  # held | delayed | skipped
    detail: str
    until: datetime | None = None


@dataclass
class WebhookRecord:
    """The call a webhook step would have made, never made."""

    at: datetime
    step: str
    visit: int
    method: str
    url: str
    headers: dict[str, str]
    body: Any
    status: int  # the scripted answer
    attempts: int = 1
    saved: dict[str, Any] = field(default_factory=dict)


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
    push_tokens: list[str] = field(default_factory=list)
    index: int = 0  # its place in the request (owner turns are taken in that order)
    claims: dict[str, tuple[str, datetime]] = field(default_factory=dict)  # key: channel, at
    holds: list[HoldRecord] = field(default_factory=list)
    webhooks: dict[str, WebhookRecord] = field(default_factory=dict)  # by idempotency key
    owners: dict[str, OwnerChosen] = field(default_factory=dict)  # by operation key

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
    send_rules: SendRules = field(default_factory=SendRules)  # the workspace's, read at start
    teams: dict[str, Team] = field(default_factory=dict)  # read at start
    webhook_responses: dict[str, tuple[int, JsonValue]] = field(default_factory=dict)
    contact_count: int = 1
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


def apply_send_rules(world: World, simulated: SimulatedContact, request: GatedSend) -> Verdict:
    """The send rules for one simulated send, as `nurture.sending.gate` decides them, over the
    workspace's rules read at start and this contact's own simulated sends (other journeys'
    sends are not simulated); a send that goes is claimed."""
    at = request.at or activity.info().current_attempt_scheduled_time
    rules = world.send_rules
    verdict = before_caps(request, at, simulated.contact.time_zone, rules)
    if verdict is None:
        claims = [
            when
            for key, (channel, when) in simulated.claims.items()
            if channel == request.channel and key != request.idempotency_key
        ]
        verdict = capped(request, at, rules, claims) or SEND
    if verdict.action == "send":
        simulated.claims[request.idempotency_key] = (request.channel, at)
    else:
        assert verdict.rule is not None and verdict.words is not None
        simulated.holds.append(
            HoldRecord(
                at=at,
                step=request.step,
                visit=request.visit,
                channel=request.channel,
                rule=verdict.rule,
                action=verdict.action,
                detail=verdict.words,
                until=verdict.until,
            )
        )
    return verdict


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
        reason = self._gate(simulated, request)
        if reason is None:  # a new send meets the send rules, as in production
            met = rules_met(apply_send_rules(self._world, simulated, request))
            if met.held:
                return SendResult(
                    message_id=None,
                    status="held",
                    reason=met.reason,
                    until=met.until,
                    rule=met.rule,
                )
            reason = met.reason
        record = SendRecord(
            at=request.at or _step_time(request.progress, request.step),
            step=request.step,
            visit=visit,
            channel=request.channel,
            template=request.template,
            status="skipped",
            reason=reason,
            to=contact.email if request.channel == "email" else contact.phone,
        )
        simulated.sends[request.idempotency_key] = record
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
            sent_at=request.at,
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


class SimulatedPushActivities:
    """Mirrors `activities.push.PushActivities`: the checks, the send rules and the render of
    a push, recorded like a send; nothing reaches a device."""

    def __init__(self, world: World) -> None:
        self._world = world

    @activity.defn
    async def send_push(self, request: PushRequest) -> PushResult:
        simulated = self._world.of(request.enrollment_id)
        key = request.idempotency_key
        devices = len(simulated.push_tokens)
        recorded = simulated.sends.get(key)
        if recorded is not None:  # a retry: the first attempt's result
            sent = recorded.status == "sent"
            return PushResult(
                status=recorded.status,
                reason=recorded.reason,
                devices=devices if sent else 0,
            )
        simulated.recorded.extend(request.progress)
        contact = simulated.contact
        reason: str | None = None
        if contact.consent.get("push") == "revoked":
            reason = "push_consent_revoked"
        elif "push" in simulated.suppressed:
            reason = f"push_{simulated.suppressed['push']}"
        elif not devices:
            reason = "no_device_token"
        if reason is None:
            met = rules_met(apply_send_rules(self._world, simulated, request))
            if met.held:
                return PushResult(status="held", reason=met.reason, until=met.until, rule=met.rule)
            reason = met.reason
        record = SendRecord(
            at=request.at or _step_time(request.progress, request.step),
            step=request.step,
            visit=int(key.rsplit(":", 1)[1]),
            channel="push",
            template=f"push:{request.step}",
            status="skipped",
            reason=reason,
            to=f"{devices} device(s)",
        )
        simulated.sends[key] = record
        if reason is not None:
            return PushResult(status="skipped", reason=reason)
        message_id = uuid.uuid5(simulated.enrollment_id, key)
        context = message_context(contact, message_id=message_id, journey=request.journey_key)
        template_key = f"{request.journey_key}.{request.step}"
        try:
            title = await render_value(request.push.title, context, template_key, "title")
            body = await render_value(request.push.body, context, template_key, "body")
            data = await render_value(request.push.data, context, template_key, "data")
        except TemplateRenderError as err:
            record.status, record.reason = "failed", str(err)[:255]
            return PushResult(status="failed", reason=record.reason)
        record.status, record.subject, record.text, record.data = "sent", title, body, data
        return PushResult(status="sent", devices=devices)


class SimulatedOutboundActivities:
    """Mirrors `activities.outbound.OutboundActivities`: the call is rendered as it would be
    made (URL, headers, body) and recorded, never made; its answer is the script's (`webhooks`
    in the request; by default 200 with `{}`), judged as a real answer is (a 5xx is retried,
    a 4xx or a redirect fails the step) and its saved fields picked the same way."""

    def __init__(self, world: World) -> None:
        self._world = world

    @activity.defn
    async def call_webhook(self, call: WebhookCall) -> WebhookResult:
        simulated = self._world.of(call.enrollment_id)
        step = call.webhook
        key = f"{call.journey_key}.{call.step}"
        context = message_context(
            simulated.contact, message_id=call.idempotency_key, journey=call.journey_key
        )
        try:
            url = await render_value(step.url, context, key, "url")
            headers = {
                name: str(await render_value(value, context, key, f"headers.{name}"))
                for name, value in step.headers.items()
            }
            body = None
            if step.body is not None and step.method != "GET":
                body = await render_value(step.body, context, key, "body")
                headers["Content-Type"] = "application/json"
        except TemplateRenderError as err:
            raise ApplicationError(
                str(err)[:250], type=WEBHOOK_REFUSED, non_retryable=True
            ) from err
        headers[IDEMPOTENCY_HEADER] = call.idempotency_key
        status, document = self._world.webhook_responses.get(call.step, (200, {}))
        record = simulated.webhooks.get(call.idempotency_key)
        if record is None:
            assert self._world.clock is not None
            record = WebhookRecord(
                at=await self._world.clock(),
                step=call.step,
                visit=int(call.idempotency_key.rsplit(":", 1)[1]),
                method=step.method,
                url=str(url),
                headers=headers,
                body=body,
                status=status,
                attempts=0,
            )
            simulated.webhooks[call.idempotency_key] = record
        record.attempts += 1
        reason = f"HTTP {status} (scripted)"
        if status >= 500 or status in _RETRYABLE_4XX:
            raise ApplicationError(reason, type="WebhookUnavailable")
        if 300 <= status < 400:
            raise ApplicationError(
                f"{reason}: redirects are not followed", type=WEBHOOK_REFUSED, non_retryable=True
            )
        if status >= 400:
            raise ApplicationError(reason, type=WEBHOOK_REFUSED, non_retryable=True)
        saved = {name: pick(document, pointer) for name, pointer in step.save.items()}
        record.saved = {name: value for name, value in saved.items() if value is not None}
        return WebhookResult(status=status, saved=record.saved)


class SimulatedOwnerActivities:
    """Mirrors `activities.owners.OwnerActivities`: the owner of the team read at start, with
    no turn taken in Postgres. Turns follow on from the team's next one, as if the contacts
    reached the step in the order the request lists them: contact i's n-th assignment (from 0)
    takes turn `team turn + 1 + i + n * contacts`, the same on every run."""

    def __init__(self, world: World) -> None:
        self._world = world

    @activity.defn
    async def assign_owner(self, request: OwnerRequest) -> OwnerChosen:
        # The operation key is "<enrollment id>:<step>:<visit>" (a copied contact may be
        # simulated twice: its contact id does not name the simulated enrollment).
        simulated = self._world.of(uuid.UUID(request.operation_key.split(":", 1)[0]))
        done = simulated.owners.get(request.operation_key)
        if done is not None:
            return done
        team = self._world.teams.get(request.team)
        if team is None:
            raise ApplicationError(
                f"no owner team {request.team!r}", type="NoOwners", non_retryable=True
            )
        if not team.owners:
            raise ApplicationError(
                f"owner team {request.team!r} has no owners", type="NoOwners", non_retryable=True
            )
        turn = team.turn + 1 + simulated.index + len(simulated.owners) * self._world.contact_count
        try:
            owner = owner_for_turn(team.owners, team.strategy, turn)
        except NoOwners as err:
            raise ApplicationError(str(err), type="NoOwners", non_retryable=True) from err
        chosen = OwnerChosen(team=request.team, name=owner.name, email=owner.email, turn=turn)
        simulated.owners[request.operation_key] = chosen
        return chosen


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
    "activities.push.PushActivities": SimulatedPushActivities,
    "activities.outbound.OutboundActivities": SimulatedOutboundActivities,
    "activities.owners.OwnerActivities": SimulatedOwnerActivities,
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
