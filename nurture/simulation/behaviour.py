"""`SimulatedBehaviour`: plays one test contact's script against its enrollment, in virtual time.

It runs beside the contact's `JourneyEnrollment` on the same time-skipping server, so the
script's moments and the journey's own timers are ordered by the one virtual clock: the server
only skips ahead when neither workflow (nor an activity of theirs) has work in flight. Each
behaviour reaches the enrollment the way it would in production: an open, click or custom
event as the `event` signal, a change of the contact as `contact_changed` once the in-memory
contact has changed (a local activity, `apply_behaviour`).

An open or click is timed from the send of its message: the simulated send activity tells
this workflow (signal `sent`) when a message of a step it watches goes out. At the horizon
the enrollment is unenrolled (reason `simulation_horizon`) so that its run ends; the driver
reports it as still running.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from nurture.contracts import EnrollmentEvent

BEHAVIOUR_WORKFLOW = "SimulatedBehaviour"
APPLY_BEHAVIOUR = "apply_behaviour"
HORIZON_REASON = "simulation_horizon"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True)


class ScriptedAction(_Message):
    """A behaviour as this workflow plays it (see `nurture.simulation.script.Behaviour`)."""

    index: int
    kind: str  # opens, clicks, event, change, join_list, leave_list
    delay: timedelta
    message_step: str | None = None  # opens and clicks: the send step
    visit: int = 1
    after_send: bool = False  # timed from the send of its message, not from entry
    link: str | None = None
    event: str | None = None
    properties: dict[str, JsonValue] = Field(default_factory=dict)


class BehaviourInput(_Message):
    contact_key: str
    enrollment_workflow_id: str
    start: datetime
    horizon: timedelta
    actions: list[ScriptedAction]


class SentNotice(_Message):
    step: str
    visit: int
    at: datetime


class AppliedBehaviour(_Message):
    contact_key: str
    index: int
    at: datetime


class Delivery(_Message):
    index: int
    due_at: datetime | None
    delivered_at: datetime | None = None
    note: str | None = None


class BehaviourResult(_Message):
    deliveries: list[Delivery]


@workflow.defn(name=BEHAVIOUR_WORKFLOW)
class SimulatedBehaviour:
    @workflow.init
    def __init__(self, input: BehaviourInput) -> None:
        self._sent: dict[str, datetime] = {}
        self._notices = 0
        self._stopped = False

    @workflow.signal
    def sent(self, notice: SentNotice) -> None:
        self._sent.setdefault(f"{notice.step}:{notice.visit}", notice.at)
        self._notices += 1

    @workflow.signal
    def stop(self) -> None:
        """The enrollment has ended: what is left of the script will not happen."""
        self._stopped = True

    def _due_at(self, input: BehaviourInput, action: ScriptedAction) -> datetime | None:
        if not action.after_send:
            return input.start + action.delay
        sent = self._sent.get(f"{action.message_step}:{action.visit}")
        return None if sent is None else sent + action.delay

    @workflow.run
    async def run(self, input: BehaviourInput) -> BehaviourResult:
        enrollment = workflow.get_external_workflow_handle(input.enrollment_workflow_id)
        done: dict[int, Delivery] = {}
        horizon_at = input.start + input.horizon
        horizon_told = False
        while not self._stopped:
            now = workflow.now()
            due = sorted(
                (when, action.index)
                for action in input.actions
                if action.index not in done
                and (when := self._due_at(input, action)) is not None
                and when <= horizon_at
            )
            ready = [(when, index) for when, index in due if when <= now]
            for when, index in ready:
                done[index] = await self._deliver(input, enrollment, input.actions[index], when)
            if ready:
                continue
            if not horizon_told and now >= horizon_at:
                with contextlib.suppress(Exception):  # it has ended already
                    await enrollment.signal("unenroll", HORIZON_REASON)
                horizon_told = True
                continue
            upcoming = [when for when, _ in due] + ([] if horizon_told else [horizon_at])
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda notices=self._notices: self._stopped or self._notices != notices,  # type: ignore[misc]
                    timeout=(min(upcoming) - now) if upcoming else None,
                    timeout_summary="next scripted behaviour",
                )
        for action in input.actions:
            if action.index not in done:
                when = self._due_at(input, action)
                done[action.index] = Delivery(
                    index=action.index,
                    due_at=when,
                    note=_not_delivered(action, when, horizon_at),
                )
        return BehaviourResult(deliveries=[done[a.index] for a in input.actions])

    async def _deliver(
        self,
        input: BehaviourInput,
        enrollment: workflow.ExternalWorkflowHandle[object],
        action: ScriptedAction,
        due_at: datetime,
    ) -> Delivery:
        try:
            if action.kind in ("change", "join_list", "leave_list"):
                await workflow.execute_local_activity(
                    APPLY_BEHAVIOUR,
                    AppliedBehaviour(contact_key=input.contact_key, index=action.index, at=due_at),
                    start_to_close_timeout=timedelta(seconds=30),
                    summary=f"behaviour {action.index}: change the contact",
                )
                await enrollment.signal("contact_changed")
            else:
                await enrollment.signal("event", scripted_event(action, due_at))
        except Exception:  # the enrollment has ended: nobody is left to hear it
            return Delivery(
                index=action.index, due_at=due_at, note="the enrollment had ended by then"
            )
        return Delivery(index=action.index, due_at=due_at, delivered_at=workflow.now())


def scripted_event(action: ScriptedAction, at: datetime) -> EnrollmentEvent:
    event_id = f"simulated-{action.index}"
    if action.kind == "event":
        return EnrollmentEvent(
            event_id=event_id,
            kind="custom",
            name=action.event,
            properties=action.properties,
            occurred_at=at,
        )
    return EnrollmentEvent(
        event_id=event_id,
        kind="open" if action.kind == "opens" else "click",
        step=action.message_step,
        visit=action.visit,
        link=action.link,
        occurred_at=at,
    )


def _not_delivered(action: ScriptedAction, due_at: datetime | None, horizon_at: datetime) -> str:
    if due_at is None:
        return f"its message ({action.message_step}, send {action.visit}) was never sent"
    if due_at > horizon_at:
        return "after the horizon"
    return "the enrollment had ended by then"
