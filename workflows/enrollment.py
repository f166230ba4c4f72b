"""`JourneyEnrollment`: one contact going through one pinned journey version.

The workflow interprets the definition it was started with (see samples-python/dsl), so editing
or republishing a journey never changes what an enrolled contact does. Signal handlers only
record state; the run loop waits on conditions over that state, so an event that arrives before
the workflow waits for it is never lost. Before every step the workflow checks, in this order:
unenroll requested, contact deleted, goal met; so a goal met during a wait ends the enrollment
before the next action.

What a step costs in Temporal work is kept to its own action: the path is recorded in Postgres
by the step's own activity (a send, a contact change) or, before a wait, by one local activity
that also covers the steps in between (branches); the contact is read by a local activity, only
at entry and after a `contact_changed`, and only the fields the journey reads are kept; the
JourneyStep search attribute changes where a contact can stay (waits, a paused hold). A long
wait whose history grows (signals pile up) continues as new in the middle of the wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutType
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from activities.contacts import ContactActivities
    from activities.enrollment import EnrollmentActivities
    from activities.messaging import MessagingActivities
    from activities.outbound import WEBHOOK_REFUSED, OutboundActivities
    from activities.owners import OwnerActivities
    from activities.push import PushActivities
    from nurture.contracts import (
        ENROLLMENT_WORKFLOW,
        CarriedState,
        Channel,
        ContactChange,
        ContactFacts,
        EnrollmentEvent,
        EnrollmentFinished,
        EnrollmentInput,
        EnrollmentOutcome,
        EnrollmentProgress,
        EnrollmentResult,
        ListChange,
        LoadContact,
        OwnerRequest,
        PathEntry,
        PushRequest,
        PushResult,
        ReceivedEvent,
        ResumeWait,
        SendRequest,
        SendResult,
        StepEntered,
        StepOutcome,
        WebhookCall,
    )
    from nurture.journeys.conditions import Engagement, evaluate, fields_read, matches_awaited
    from nurture.journeys.definition import (
        AddToListStep,
        AssignOwnerStep,
        BranchStep,
        CustomEvent,
        ExitStep,
        RemoveFromListStep,
        SendEmailStep,
        SendPushStep,
        SendSmsStep,
        SplitStep,
        Step,
        UpdateContactStep,
        WaitForStep,
        WaitStep,
        WebhookStep,
    )
    from nurture.journeys.durations import format_duration
    from nurture.journeys.experiments import CONTROL, split_path
    from nurture.journeys.schedule import plan_wait, spread_wake
    from nurture.sending.throttle import send_task_queue
    from nurture.tracing import ENROLLMENT_STATUS, JOURNEY_STEP

# Postgres or a provider being down for a while must delay a journey, never break it.
_PATIENT = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
)
_DB_TIMEOUT = timedelta(seconds=30)
_SEND_TIMEOUT = timedelta(minutes=2)


class _Finish(Exception):
    """Raised inside the run loop to end the enrollment with a status and reason."""

    def __init__(self, status: EnrollmentOutcome, reason: str | None, detail: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.detail = status, reason, detail


@workflow.defn(name=ENROLLMENT_WORKFLOW)
class JourneyEnrollment:
    @workflow.init
    def __init__(self, input: EnrollmentInput) -> None:
        carried = input.carried
        self._input = input
        self._status = "active"
        self._events: list[ReceivedEvent] = list(carried.events) if carried else []
        self._seen: set[str] = set(carried.seen_event_ids) if carried else set()
        self._seq = self._events[-1].seq if self._events else 0
        self._visits: dict[str, int] = dict(carried.visits) if carried else {}
        self._passed: dict[str, int] = dict(carried.passed) if carried else {}
        self._path: list[PathEntry] = list(carried.path) if carried else []
        self._contact_dirty = carried.contact_dirty if carried else True
        self._unenroll_reason: str | None = carried.unenroll_reason if carried else None
        self._paused = carried.paused if carried else input.paused
        self._facts: ContactFacts | None = None
        self._unrecorded: StepOutcome | None = carried.unrecorded if carried else None
        # Steps entered and not yet written to Postgres: the next activity writes them.
        self._unsaved: list[StepEntered] = list(carried.unsaved) if carried else []
        self._fields = fields_read(input.definition)
        self._shown_step: str | None = None  # the JourneyStep search attribute, as last set

    # --- signals and query: they only record; the run loop acts -----------------------------

    @workflow.signal
    def event(self, event: EnrollmentEvent) -> None:
        """An open, click or custom event; repeats of an event id are ignored."""
        if event.event_id in self._seen:
            return
        self._seen.add(event.event_id)
        self._seq += 1
        self._events.append(ReceivedEvent(seq=self._seq, event=event, received_at=workflow.now()))

    @workflow.signal
    def contact_changed(self) -> None:
        """The contact was edited elsewhere: reload it before the next decision."""
        self._contact_dirty = True

    @workflow.signal
    def unenroll(self, reason: str | None = None) -> None:
        self._unenroll_reason = reason or "unenrolled"

    @workflow.signal
    def pause(self) -> None:
        """The journey was paused: hold before the next send (waits and branches go on)."""
        self._paused = True

    @workflow.signal
    def resume(self) -> None:
        self._paused = False

    @workflow.query
    def progress(self) -> EnrollmentProgress:
        current = self._path[-1].step if self._path else None
        return EnrollmentProgress(
            status="paused" if self._paused and self._status == "active" else self._status,
            current_step=current,
            path=self._path,
            events_received=len(self._events),
        )

    # --- the interpreter ---------------------------------------------------------------------

    @workflow.run
    async def run(self, input: EnrollmentInput) -> EnrollmentResult:
        definition = input.definition
        step_id: str | None = input.carried.next_step if input.carried else definition.start
        resume = input.carried.resume if input.carried else None
        try:
            if input.carried is None:
                await self._check_entry()
                if input.group == CONTROL:
                    raise _Finish("exited", "holdout")
            steps_this_run = 0
            while step_id is not None:
                await self._checkpoint()
                if resume is None and (
                    steps_this_run >= input.max_steps_per_run or self._history_full()
                ):
                    self._continue_as_new(step_id)
                step = definition.steps[step_id]
                if resume is not None and resume.step == step_id:
                    visit, until, resume = resume.visit, resume.until, None
                else:
                    visit, until = self._enter(step_id, step), None
                outcome, step_id = await self._run_step(step_id, step, visit, until)
                self._path[-1].left_at = workflow.now()
                self._path[-1].outcome = outcome
                self._unrecorded = StepOutcome(
                    step=self._path[-1].step, visit=visit, outcome=outcome
                )
                steps_this_run += 1
            raise _Finish("completed", None)
        except _Finish as finish:
            return await self._finish(finish.status, finish.reason, finish.detail)
        except asyncio.CancelledError:
            # Cancelled through Temporal rather than unenrolled: still leave a true record.
            await self._finish("exited", "cancelled")
            raise

    def _history_full(self) -> bool:
        info = workflow.info()
        return (
            info.get_current_history_length() >= self._input.max_history_events
            or info.is_continue_as_new_suggested()
        )

    async def _check_entry(self) -> None:
        """HubSpot's rule: a contact who already meets the goal is not enrolled at all."""
        if self._unenroll_reason is not None:
            raise _Finish("exited", self._unenroll_reason)
        facts = await self._refresh_contact()
        if not facts.exists:
            raise _Finish("not_enrolled", "contact_deleted")
        if self._goal_met():
            raise _Finish("not_enrolled", "goal_already_met")

    async def _checkpoint(self) -> None:
        """Between actions: honour unenroll, a deleted contact, and the goal."""
        if self._unenroll_reason is not None:
            raise _Finish("exited", self._unenroll_reason)
        if self._contact_dirty:
            await self._refresh_contact()
        assert self._facts is not None
        if not self._facts.exists:
            raise _Finish("exited", "contact_deleted")
        if self._goal_met():
            raise _Finish("exited", "goal_met")

    def _goal_met(self) -> bool:
        goal = self._input.definition.goal
        assert self._facts is not None
        return goal is not None and evaluate(goal.criteria, self._facts, self._engagement())

    def _engagement(self) -> Engagement:
        return Engagement(events=self._events, latest_visit=self._visits)

    async def _refresh_contact(self) -> ContactFacts:
        self._contact_dirty = False
        try:
            self._facts = await workflow.execute_local_activity_method(
                EnrollmentActivities.load_contact,
                LoadContact(
                    enrollment_id=self._input.enrollment_id,
                    contact_id=self._input.contact_id,
                    fields=self._fields,
                ),
                start_to_close_timeout=_DB_TIMEOUT,
                retry_policy=_PATIENT,
                summary="load contact",
            )
        except (ActivityError, ApplicationError) as err:
            # Over what one Temporal payload holds (activities.enrollment.loadable):
            # retrying cannot help, and failing the workflow would leave the row `active`. A
            # local activity's failure may arrive unwrapped, without its ActivityError.
            cause = err.cause if isinstance(err, ActivityError) else err
            if isinstance(cause, ApplicationError) and cause.type == "ContactTooLarge":
                raise _Finish("exited", "contact_too_large") from None
            raise
        return self._facts

    def _enter(self, step_id: str, step: Step) -> int:
        """Enter a step: on the path at once, in Postgres with the next write."""
        visit = self._visits.get(step_id, 0) + 1
        self._visits[step_id] = visit
        now = workflow.now()
        self._path.append(PathEntry(step=step_id, type=step.type, visit=visit, entered_at=now))
        workflow.set_current_details(f"**{step_id}** ({step.type}), visit {visit}")
        self._unsaved.append(
            StepEntered(
                enrollment_id=self._input.enrollment_id,
                step=step_id,
                step_type=step.type,
                visit=visit,
                at=now,
                previous=self._unrecorded,
            )
        )
        self._unrecorded = None
        return visit

    async def _dwell(self, step_id: str) -> None:
        """Before the contact stays at a step (a wait, a paused hold): the path is written to
        Postgres and the step shown in the JourneyStep search attribute, so both say where
        the contact is for as long as it is there."""
        if self._shown_step != step_id:
            workflow.upsert_search_attributes([JOURNEY_STEP.value_set(step_id)])
            self._shown_step = step_id
        if self._unsaved:
            unsaved = list(self._unsaved)
            await workflow.execute_local_activity_method(
                EnrollmentActivities.record_steps,
                unsaved,
                start_to_close_timeout=_DB_TIMEOUT,
                retry_policy=_PATIENT,
                summary=f"{step_id}: record path",
            )
            del self._unsaved[: len(unsaved)]

    async def _run_step(
        self, step_id: str, step: Step, visit: int, until: datetime | None
    ) -> tuple[str, str | None]:
        """Run one step; return its outcome (for the path) and the next step id. `until`: a
        wait resumed after continue-as-new, with its deadline."""
        match step:
            case SendEmailStep() | SendSmsStep():
                return await self._send(step_id, step, visit), step.next
            case WaitStep():
                return await self._wait(step_id, step, visit, until), step.next
            case WaitForStep():
                return await self._wait_for(step_id, step, visit, until)
            case BranchStep():
                engagement = self._engagement()
                assert self._facts is not None
                for i, rule in enumerate(step.rules):
                    if evaluate(rule.condition, self._facts, engagement):
                        return f"rule {i} matched", rule.next
                return "default", step.default
            case UpdateContactStep():
                change = ContactChange(
                    operation_key=f"{self._input.enrollment_id}:{step_id}:{visit}",
                    contact_id=self._input.contact_id,
                    source=self._source(step_id),
                    enrollment_id=self._input.enrollment_id,
                    progress=self._unsaved,
                    fields=self._fields,
                    set=step.set,
                    unset=step.unset,
                    add_tags=step.add_tags,
                    remove_tags=step.remove_tags,
                    increment=step.increment,
                )
                return await self._change_contact(
                    ContactActivities.update_contact, change, f"{step_id}: update contact"
                ), step.next
            case AddToListStep() | RemoveFromListStep():
                member = isinstance(step, AddToListStep)
                change_list = ListChange(
                    contact_id=self._input.contact_id,
                    list_key=step.list,
                    member=member,
                    source=self._source(step_id),
                    enrollment_id=self._input.enrollment_id,
                    progress=self._unsaved,
                    fields=self._fields,
                )
                verb = "add to" if member else "remove from"
                return await self._change_contact(
                    ContactActivities.change_list_membership,
                    change_list,
                    f"{step_id}: {verb} list {step.list}",
                ), step.next
            case ExitStep():
                raise _Finish("exited", step.reason)
            case SplitStep():
                return self._split(step_id, step)
            case WebhookStep():
                return await self._webhook(step_id, step, visit)
            case AssignOwnerStep():
                return await self._assign_owner(step_id, step, visit), step.next
            case SendPushStep():
                return await self._send_push(step_id, step, visit), step.next
        raise ApplicationError(f"unknown step type {step.type!r}", non_retryable=True)

    def _source(self, step_id: str) -> str:
        """How the contact's change log names a change made by this step."""
        return f"journey:{self._input.journey_key}:{step_id}"

    async def _send(self, step_id: str, step: SendEmailStep | SendSmsStep, visit: int) -> str:
        channel: Channel = "email" if isinstance(step, SendEmailStep) else "sms"
        result, holds = await self._through_gate(
            step_id,
            step,
            visit,
            channel,
            lambda entered: self._send_request(step_id, step, visit, channel, entered),
            MessagingActivities.send_message,
            f"{step_id}: send {channel} '{step.template}'",
        )
        if isinstance(result, str):
            return result
        outcome = result.status if result.reason is None else f"{result.status}: {result.reason}"
        return _with_holds(outcome, holds)

    async def _through_gate(
        self,
        step_id: str,
        step: GatedStep,
        visit: int,
        channel: str,
        request_for: Callable[[datetime], SendRequest | PushRequest],
        method: Callable[[Any, Any], Awaitable[SendResult | PushResult]],
        summary: str,
    ) -> tuple[SendResult | PushResult | str, list[str]]:
        """The one gate every send (email, SMS, push) passes through. The send rules
        (docs/send-rules.md) are decided by the send activity itself, for this instant: a send
        held by quiet hours or delayed by a frequency cap sleeps (a timer named for the rule)
        until the rule allows it, or until its step's expires_after, and is tried again; a
        journey whose sends no rule holds costs what it always did, one activity per send.
        Returns the activity's last result (a string: the outcome of a failed send) and the
        holds met on the way."""
        await self._hold_while_paused(step_id)
        entered = self._path[-1].entered_at
        # A hold cut by continue-as-new left its note on the path: keep it in the outcome.
        earlier = self._path[-1].outcome
        holds = [earlier] if earlier and earlier.startswith(_HOLD_PREFIXES) else []
        while True:
            request = request_for(entered)
            try:
                result = await workflow.execute_activity_method(
                    method,
                    request,
                    task_queue=send_task_queue(workflow.info().task_queue, channel),
                    start_to_close_timeout=_SEND_TIMEOUT,
                    retry_policy=_PATIENT,
                    summary=summary,
                    schedule_to_start_timeout=self._expiry_timeout(step, entered),
                )
            except ActivityError as err:
                if _waited_too_long(err) and step.expires_after is not None:
                    # Throttled past its expiry: the send is recorded as skipped, off the
                    # throttled queue.
                    result = await self._record_expired(method, request, step_id)
                else:
                    return f"failed: {_cause(err)}", holds  # the path is written by the next write
            self._saved(request.progress)
            if result.status == "held":
                assert result.until is not None and result.reason is not None
                holds.append(result.reason)
                await self._hold_send(step_id, step, visit, entered, result.reason, result.until)
                continue
            break
        if result.reason == "contact_deleted":
            self._contact_dirty = True  # the next checkpoint reloads it and ends the enrollment
        return result, holds

    def _send_request(
        self,
        step_id: str,
        step: SendEmailStep | SendSmsStep,
        visit: int,
        channel: Channel,
        entered: datetime,
    ) -> SendRequest:
        return SendRequest(
            channel=channel,
            template=step.template,
            exclusion_segment=self._input.definition.entry.exclusion_segment,
            **self._gated_send(step_id, step, visit, entered),
        )

    def _gated_send(
        self, step_id: str, step: GatedStep, visit: int, entered: datetime
    ) -> dict[str, Any]:
        """The fields a send request (email, SMS or push) shares: who, which attempt, and what
        the send rules decide by (`nurture.sending.gate.GatedSend`)."""
        definition = self._input.definition
        return {
            "idempotency_key": f"{self._input.enrollment_id}:{step_id}:{visit}",
            "enrollment_id": self._input.enrollment_id,
            "contact_id": self._input.contact_id,
            "journey_key": self._input.journey_key,
            "step": step_id,
            "progress": self._unsaved,
            "visit": visit,
            "at": workflow.now(),
            "transactional": step.transactional,
            "on_cap": step.on_cap or definition.on_cap,
            "quiet_hours": definition.quiet_hours,
            # A journey left at UTC (the default) defers to the workspace's time zone.
            "time_zone": definition.time_zone if definition.time_zone != "UTC" else None,
            "held_since": entered,
            "expires_after": step.expires_after,
        }

    def _expiry_timeout(self, step: GatedStep, entered: datetime) -> timedelta | None:
        """A send with an expiry may wait in its (throttled) queue only until it expires."""
        if step.expires_after is None:
            return None
        left = entered + step.expires_after - workflow.now()
        return left if left > timedelta(0) else None

    async def _record_expired(
        self,
        method: Callable[[Any, Any], Awaitable[SendResult | PushResult]],
        request: SendRequest | PushRequest,
        step_id: str,
    ) -> SendResult | PushResult:
        """Past its expiry now: the activity, on the workflow's own (unthrottled) queue,
        records the send as skipped."""
        # With its progress: the throttled attempt never started, so never wrote the path.
        request = request.model_copy(update={"at": workflow.now()})
        return await workflow.execute_activity_method(
            method,
            request,
            start_to_close_timeout=_SEND_TIMEOUT,
            retry_policy=_PATIENT,
            summary=f"{step_id}: expired while throttled",
        )

    async def _hold_send(
        self,
        step_id: str,
        step: GatedStep,
        visit: int,
        entered: datetime,
        reason: str,
        until: datetime,
    ) -> None:
        """Sleep until a rule allows the send (or it expires). A change to the contact (its
        time zone) wakes it early, to decide again."""
        expires = entered + step.expires_after if step.expires_after is not None else None
        deadline = min(until, expires) if expires is not None else until
        self._path[-1].outcome = reason
        workflow.set_current_details(f"**{step_id}**: {reason}")
        await self._dwell(step_id)
        facts = self._facts
        await self._sleep_until(
            deadline, f"{step_id}: {reason}", step_id, visit, until=lambda: self._facts is not facts
        )
        await self._hold_while_paused(step_id)

    async def _hold_while_paused(self, step_id: str) -> None:
        """A paused journey keeps its contacts, holding each before its next send."""
        if not self._paused:
            return
        workflow.set_current_details(f"**{step_id}**: journey paused, holding before the send")
        await self._dwell(step_id)
        while self._paused:
            await workflow.wait_condition(
                lambda: not self._paused or self._unenroll_reason is not None or self._contact_dirty
            )
            await self._checkpoint()
        workflow.set_current_details(f"**{step_id}**: resumed")

    async def _change_contact(
        self, method: Callable[..., Any], change: ContactChange | ListChange, summary: str
    ) -> str:
        try:
            self._facts = await workflow.execute_activity_method(
                method,
                change,
                start_to_close_timeout=_DB_TIMEOUT,
                retry_policy=_PATIENT,
                summary=summary,
            )
        except ActivityError as err:
            return f"failed: {_cause(err)}"
        self._saved(change.progress)
        self._contact_dirty = False
        return "done"

    def _saved(self, progress: list[StepEntered]) -> None:
        """An activity wrote these steps: they are no longer waiting for a write."""
        del self._unsaved[: len(progress)]

    async def _wait(self, step_id: str, step: WaitStep, visit: int, until: datetime | None) -> str:
        assert self._facts is not None
        plan = plan_wait(step, workflow.now(), self._facts, self._input.definition.time_zone)
        if until is None:
            if plan.until is None:
                return plan.note
            if plan.until <= workflow.now():
                return f"{plan.note}: already past, went on at once"
            until = plan.until
            if step.duration is None:  # an instant many contacts share: spread their wake-ups
                until = spread_wake(until, self._input.enrollment_id)
        await self._dwell(step_id)
        await self._sleep_until(until, f"{step_id}: {plan.note}", step_id, visit)
        return "waited"

    async def _wait_for(
        self, step_id: str, step: WaitForStep, visit: int, until: datetime | None
    ) -> tuple[str, str | None]:
        awaited = step.event
        # A custom event counts if it arrived since the journey last passed this step;
        # an open or click belongs to a message, which `matches_awaited` pins to its latest send.
        since = self._passed.get(step_id, 0) if isinstance(awaited, CustomEvent) else 0

        def matched() -> ReceivedEvent | None:
            for received in self._events:
                if received.seq > since and matches_awaited(awaited, received.event, self._visits):
                    return received
            return None

        deadline = until or workflow.now() + step.timeout
        summary = f"{step_id}: wait for {awaited.type} (timeout {format_duration(step.timeout)})"
        await self._dwell(step_id)
        found = await self._sleep_until(
            deadline, summary, step_id, visit, until=lambda: matched() is not None
        )
        self._passed[step_id] = self._seq
        hit = matched() if found else None
        if hit is None:
            return "timeout", step.on_timeout
        return f"event {hit.event.event_id}", step.on_event

    async def _sleep_until(
        self,
        deadline: datetime,
        summary: str,
        step_id: str,
        visit: int,
        until: Callable[[], bool] | None = None,
    ) -> bool:
        """Sleep until `deadline` or until `until()` holds (then True).

        Wakes early for an unenroll, a contact change or (with a goal) any new event, runs the
        checkpoint, and sleeps again for the time that is left. One timer per wake-up: history
        grows with signals and steps, not with the time slept; once it is long, the run
        continues as new and the next run sleeps on to the same deadline.
        """
        watch_events = self._input.definition.goal is not None
        while True:
            if until is not None and until():
                return True
            remaining = deadline - workflow.now()
            if remaining <= timedelta(0):
                return False

            def wake(seq: int = self._seq) -> bool:
                return (
                    (until is not None and until())
                    or self._unenroll_reason is not None
                    or self._contact_dirty
                    or (watch_events and self._seq != seq)
                )

            try:
                await workflow.wait_condition(wake, timeout=remaining, timeout_summary=summary)
            except TimeoutError:
                return until is not None and until()
            await self._checkpoint()
            if self._history_full() and not (until is not None and until()):
                self._continue_as_new(
                    step_id, ResumeWait(step=step_id, visit=visit, until=deadline)
                )

    def _continue_as_new(self, next_step: str, resume: ResumeWait | None = None) -> None:
        carried = CarriedState(
            next_step=next_step,
            visits=self._visits,
            passed=self._passed,
            path=self._path,
            events=self._events,
            seen_event_ids=sorted(self._seen),
            contact_dirty=True,
            unenroll_reason=self._unenroll_reason,
            unrecorded=self._unrecorded,
            paused=self._paused,
            unsaved=self._unsaved,
            resume=resume,
        )
        workflow.continue_as_new(self._input.model_copy(update={"carried": carried}))

    async def _finish(
        self, status: EnrollmentOutcome, reason: str | None, detail: str | None = None
    ) -> EnrollmentResult:
        self._status = status
        ending = f"{status}" + (f": {reason}" if reason else "")
        workflow.set_current_details(ending)
        workflow.upsert_search_attributes([ENROLLMENT_STATUS.value_set(status)])
        if self._unrecorded is None and self._path and self._path[-1].left_at is None:
            # Ended inside a step (the goal met during its wait, an unenroll, an exit step):
            # the step is left now, for this reason, in the path and in its row.
            left = self._path[-1]
            left.left_at, left.outcome = workflow.now(), ending
            self._unrecorded = StepOutcome(step=left.step, visit=left.visit, outcome=ending)
        await workflow.execute_local_activity_method(
            EnrollmentActivities.finish_enrollment,
            EnrollmentFinished(
                enrollment_id=self._input.enrollment_id,
                status=status,
                reason=reason,
                at=workflow.now(),
                last=self._unrecorded,
                detail=detail,
                progress=self._unsaved,
            ),
            start_to_close_timeout=_DB_TIMEOUT,
            retry_policy=_PATIENT,
            summary=f"record {status}" + (f" ({reason})" if reason else ""),
        )
        self._unrecorded = None
        self._unsaved = []
        return EnrollmentResult(status=status, reason=reason, path=self._path)

    # --- split, webhook, assign_owner and send_push steps ----------------------------------

    def _split(self, step_id: str, step: SplitStep) -> tuple[str, str | None]:
        """The path decided at entry (the enrollment row has it too); computed the same way
        for a step the input does not list."""
        name = self._input.variants.get(step_id) or split_path(
            self._input.journey_key, step_id, self._input.contact_id, step
        )
        for path in step.paths:
            if path.name == name:
                workflow.set_current_details(f"**{step_id}** (split): path {name}")
                return f"path {name}", path.next
        raise ApplicationError(f"split {step_id} has no path {name!r}", non_retryable=True)

    async def _webhook(self, step_id: str, step: WebhookStep, visit: int) -> tuple[str, str | None]:
        await self._hold_while_paused(step_id)  # a call out of Nurture waits like a send
        key = f"{self._input.enrollment_id}:{step_id}:{visit}"
        failed_next = step.on_failure or step.next
        try:
            result = await workflow.execute_activity_method(
                OutboundActivities.call_webhook,
                WebhookCall(
                    idempotency_key=key,
                    enrollment_id=self._input.enrollment_id,
                    contact_id=self._input.contact_id,
                    journey_key=self._input.journey_key,
                    step=step_id,
                    webhook=step,
                ),
                # The step's own timeout, and some room to render and resolve around it.
                start_to_close_timeout=timedelta(seconds=step.timeout_seconds + 15),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=2),
                    backoff_coefficient=2.0,
                    maximum_interval=timedelta(minutes=2),
                    maximum_attempts=step.retries + 1,
                    non_retryable_error_types=[WEBHOOK_REFUSED],
                ),
                summary=f"{step_id}: webhook {step.method} {step.url[:80]}",
            )
        except ActivityError as err:
            return f"failed: {_cause(err)}", failed_next
        if result.skipped is not None:
            self._contact_dirty = True  # the checkpoint ends the enrollment
            return f"skipped: {result.skipped}", step.next
        outcome = f"HTTP {result.status}"
        if result.saved:
            change = ContactChange(
                operation_key=f"{key}:save",
                contact_id=self._input.contact_id,
                source=self._source(step_id),
                enrollment_id=self._input.enrollment_id,
                progress=self._unsaved,
                fields=self._fields,
                set=result.saved,
            )
            saved = await self._change_contact(
                ContactActivities.update_contact, change, f"{step_id}: save response fields"
            )
            if saved != "done":
                return f"{outcome}, {saved}", failed_next
            outcome += f", saved {', '.join(sorted(result.saved))}"
        return outcome, step.next

    async def _assign_owner(self, step_id: str, step: AssignOwnerStep, visit: int) -> str:
        key = f"{self._input.enrollment_id}:{step_id}:{visit}"
        try:
            owner = await workflow.execute_activity_method(
                OwnerActivities.assign_owner,
                OwnerRequest(operation_key=key, contact_id=self._input.contact_id, team=step.team),
                start_to_close_timeout=_DB_TIMEOUT,
                retry_policy=_PATIENT,
                summary=f"{step_id}: next owner of team {step.team}",
            )
        except ActivityError as err:
            return f"failed: {_cause(err)}"
        change = ContactChange(
            operation_key=f"{key}:owner",
            contact_id=self._input.contact_id,
            source=self._source(step_id),
            enrollment_id=self._input.enrollment_id,
            progress=self._unsaved,
            fields=self._fields,
            set={step.field: {"name": owner.name, "email": owner.email, "team": owner.team}},
        )
        done = await self._change_contact(
            ContactActivities.update_contact, change, f"{step_id}: set {step.field}"
        )
        # The owner's name is shown, not the email: the history is visible in the Web UI.
        return f"assigned {owner.name} (turn {owner.turn})" if done == "done" else done

    async def _send_push(self, step_id: str, step: SendPushStep, visit: int) -> str:
        result, holds = await self._through_gate(
            step_id,
            step,
            visit,
            "push",
            lambda entered: self._push_request(step_id, step, visit, entered),
            PushActivities.send_push,
            f"{step_id}: send push",
        )
        if isinstance(result, str):
            return result
        if isinstance(result, PushResult) and result.status == "sent":
            removed = f", {result.removed} invalid token(s) removed" if result.removed else ""
            outcome = f"sent to {result.devices} device(s){removed}"
        else:
            outcome = (
                result.status if result.reason is None else f"{result.status}: {result.reason}"
            )
        return _with_holds(outcome, holds)

    def _push_request(
        self, step_id: str, step: SendPushStep, visit: int, entered: datetime
    ) -> PushRequest:
        return PushRequest(push=step, **self._gated_send(step_id, step, visit, entered))


_HOLD_PREFIXES = ("held: ", "delayed: ")
_OUTCOME_MAX = 255  # enrollment_steps.outcome
GatedStep = SendEmailStep | SendSmsStep | SendPushStep


def _with_holds(outcome: str, holds: list[str]) -> str:
    """The outcome with each hold once, in order; within the stored path's 255 characters."""
    if not holds:
        return outcome
    text = f"{outcome} ({'; '.join(dict.fromkeys(holds))})"
    return text if len(text) <= _OUTCOME_MAX else text[: _OUTCOME_MAX - 1] + "…"


def _waited_too_long(err: ActivityError) -> bool:
    """The activity was not started before its schedule-to-start timeout (its expiry)."""
    cause = err.cause
    return isinstance(cause, ActivityTimeout) and cause.type == TimeoutType.SCHEDULE_TO_START


def _cause(err: ActivityError) -> str:
    cause = err.cause
    return str(cause.message if isinstance(cause, ApplicationError) else cause or err)[:200]
