"""What the enrollment workflow, its activities and its callers send each other.

Everything here travels through Temporal (pydantic data converter), so it holds ids and facts,
never ORM objects, and no email addresses or phone numbers: the workflow history is visible in
the Temporal UI, and contact PII stays in Postgres.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from nurture.journeys.definition import JourneyDefinition, SendPushStep, WebhookStep
from nurture.sending.windows import QuietHours

ENROLLMENT_WORKFLOW = "JourneyEnrollment"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True)


def enrollment_workflow_id(journey_key: str, contact_id: uuid.UUID) -> str:
    """One workflow id per (journey, contact): at most one enrollment at a time. No PII."""
    return f"journey:{journey_key}:contact:{contact_id}"


class ContactFacts(_Message):
    """What conditions and waits may look at; addresses are reduced to "has one"."""

    contact_id: uuid.UUID
    exists: bool = True
    has_email: bool = False
    has_phone: bool = False
    time_zone: str | None = None
    fields: dict[str, JsonValue] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    lists: list[str] = Field(default_factory=list)
    consent: dict[str, str] = Field(default_factory=dict)


EventKind = Literal["open", "click", "custom"]


class EnrollmentEvent(_Message):
    """An engagement or custom event signalled to an enrollment (stored in Postgres first)."""

    event_id: str = Field(min_length=1, max_length=255, description="dedupe key")
    kind: EventKind
    step: str | None = Field(default=None, description="for open/click: the send step")
    visit: int | None = Field(default=None, description="for open/click: which send of the step")
    link: str | None = Field(default=None, description="for click: the named link")
    name: str | None = Field(default=None, description="for custom: the event name")
    properties: dict[str, JsonValue] = Field(default_factory=dict)
    occurred_at: datetime | None = None


class ReceivedEvent(_Message):
    """An event as the workflow keeps it: in arrival order, with the time it arrived."""

    seq: int
    event: EnrollmentEvent
    received_at: datetime


class PathEntry(BaseModel):
    step: str
    type: str
    visit: int
    entered_at: datetime
    left_at: datetime | None = None
    outcome: str | None = None


class StepOutcome(_Message):
    step: str
    visit: int
    outcome: str


class ResumeWait(_Message):
    """A wait cut by continue-as-new (its history grew): the next run waits on until `until`
    without entering the step again."""

    step: str
    visit: int
    until: datetime


class CarriedState(_Message):
    """What a run hands to its successor on continue-as-new."""

    next_step: str | None
    visits: dict[str, int]
    passed: dict[str, int]
    path: list[PathEntry]
    events: list[ReceivedEvent]
    seen_event_ids: list[str]
    contact_dirty: bool
    unenroll_reason: str | None = None
    unrecorded: StepOutcome | None = None
    paused: bool = False
    unsaved: list[StepEntered] = Field(default_factory=list)
    resume: ResumeWait | None = None


class EnrollmentInput(_Message):
    enrollment_id: uuid.UUID
    contact_id: uuid.UUID
    journey_key: str
    version: int
    definition: JourneyDefinition
    max_steps_per_run: int = Field(default=500, ge=1)
    paused: bool = Field(default=False, description="the journey was paused when this started")
    # Continue as new once a run's history is this long, also in the middle of a long wait
    # (signals pile up there); well below Temporal's 51,200-event limit.
    max_history_events: int = Field(default=5_000, ge=50)
    carried: CarriedState | None = None
    # A journey with a holdout: "control" (held out: sent nothing) or "treatment".
    group: str | None = None
    # {split step id: path name}, decided at entry (nurture.journeys.experiments).
    variants: dict[str, str] = Field(default_factory=dict)


EnrollmentOutcome = Literal["completed", "exited", "not_enrolled", "failed"]


class EnrollmentResult(_Message):
    status: EnrollmentOutcome
    reason: str | None = None
    path: list[PathEntry] = Field(default_factory=list)


class EnrollmentProgress(_Message):
    """The answer to the `progress` query."""

    status: str
    current_step: str | None
    path: list[PathEntry]
    events_received: int


# --- activity inputs and outputs -----------------------------------------------------------------


class StepEntered(_Message):
    enrollment_id: uuid.UUID
    step: str
    step_type: str
    visit: int
    at: datetime
    previous: StepOutcome | None = None


class EnrollmentFinished(_Message):
    enrollment_id: uuid.UUID
    status: EnrollmentOutcome
    reason: str | None
    at: datetime
    last: StepOutcome | None = None
    detail: str | None = None
    # Steps entered since the last write (a branch, an exit step), recorded with the end.
    progress: list[StepEntered] = Field(default_factory=list)


class LoadContact(_Message):
    enrollment_id: uuid.UUID
    contact_id: uuid.UUID
    # The custom fields the journey reads; the rest of the contact stays out of the history.
    # None: all of them.
    fields: list[str] | None = None


Channel = Literal["email", "sms"]


class SendRequest(_Message):
    idempotency_key: str
    enrollment_id: uuid.UUID
    contact_id: uuid.UUID
    journey_key: str
    step: str
    channel: Channel
    template: str
    # The journey's exclusion segment: a contact who joined it since entering gets no more sends.
    exclusion_segment: str | None = None
    # The path since the last write, this send step included: recorded by the send itself.
    progress: list[StepEntered] = Field(default_factory=list)
    # Send rules (nurture.sending.gate; docs/send-rules.md). `at`: the workflow's time of this
    # attempt, the instant caps and quiet hours are decided for (None: the activity's clock).
    visit: int = 0
    at: datetime | None = None
    transactional: bool = False
    on_cap: Literal["delay", "skip"] = "delay"
    quiet_hours: list[QuietHours] | None = None  # the journey's; None: the workspace's
    time_zone: str | None = None  # the journey's, when it set one
    held_since: datetime | None = None  # when the step was entered
    expires_after: timedelta | None = None


class SendResult(_Message):
    # None when a rule held or delayed the send ("held"): no message exists yet.
    message_id: uuid.UUID | None
    status: Literal["sent", "skipped", "failed", "held", "unknown"]
    reason: str | None = None
    until: datetime | None = None  # held: when to try again
    rule: str | None = None  # held or skipped by a send rule: quiet_hours | frequency_cap | ...


class ContactChange(_Message):
    """One update_contact step's changes, applied at most once per `operation_key`."""

    operation_key: str
    contact_id: uuid.UUID
    # Who changes it, for the change log ("journey:<key>:<step>"); that enrollment is not told.
    source: str = "journey"
    enrollment_id: uuid.UUID | None = None
    progress: list[StepEntered] = Field(default_factory=list)
    fields: list[str] | None = None  # of the facts returned (see LoadContact)
    set: dict[str, JsonValue] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)
    add_tags: list[str] = Field(default_factory=list)
    remove_tags: list[str] = Field(default_factory=list)
    increment: dict[str, int | float] = Field(default_factory=dict)


class ListChange(_Message):
    contact_id: uuid.UUID
    list_key: str
    member: bool
    source: str = "journey"
    enrollment_id: uuid.UUID | None = None
    progress: list[StepEntered] = Field(default_factory=list)
    fields: list[str] | None = None  # of the facts returned (see LoadContact)


# --- bulk enrollment -----------------------------------------------------------------------------

BULK_ENROLL_WORKFLOW = "BulkEnroll"


class BulkProgress(_Message):
    after_contact_id: uuid.UUID | None = None  # the cursor: members are taken in id order
    done: int = 0
    enrolled: int = 0
    skipped: int = 0


class BulkEnrollInput(_Message):
    """Enroll a list's or a segment's members. A scheduled run (recurring segment journeys)
    has no `bulk_id`: the workflow opens its own progress row, one per run."""

    bulk_id: uuid.UUID | None = None
    journey_key: str
    list_key: str | None = None
    segment_key: str | None = None
    # Only the list's members who joined since (a CSV import into the list).
    joined_since: datetime | None = None
    page_size: int = Field(default=200, ge=1, le=5000)
    progress: BulkProgress = Field(default_factory=BulkProgress)
    # Only the members the journey's launch kept out (held back, test contacts only) and
    # would admit now: the run that follows a widened rollout (nurture.journeys.launch).
    readmit: bool = False

    @model_validator(mode="after")
    def _one_audience(self) -> BulkEnrollInput:
        if (self.list_key is None) == (self.segment_key is None):
            raise ValueError("give exactly one of list_key, segment_key")
        return self

    @property
    def audience(self) -> str:
        return f"list {self.list_key}" if self.list_key else f"segment {self.segment_key}"


class BulkRun(_Message):
    """What a run without a progress row needs to open one."""

    workflow_id: str
    journey_key: str
    list_key: str | None = None
    segment_key: str | None = None


class BulkPage(_Message):
    bulk_id: uuid.UUID
    journey_key: str
    list_key: str | None = None
    segment_key: str | None = None
    joined_since: datetime | None = None
    page_size: int
    progress: BulkProgress
    readmit: bool = False  # see BulkEnrollInput.readmit


class BulkPageResult(_Message):
    progress: BulkProgress
    finished: bool


# --- watched segments ----------------------------------------------------------------------------

SEGMENT_WATCH_WORKFLOW = "SegmentWatch"
SEGMENT_WATCH_ID = "nurture:segment-watch"  # one per namespace, whatever the number of workers


class SegmentWatchInput(_Message):
    sweeps: int = 0  # done by earlier runs (continue-as-new), for the Web UI


class SweepResult(_Message):
    sweep: int = 0  # its number, counted by the workflow across runs
    segments: int = 0  # watched segments compared
    entered: int = 0
    left: int = 0
    admitted: int = 0  # entries given to their journeys (now or left over from before)
    enrolled: int = 0
    deferred: bool = False  # some entries could not be admitted (Temporal unreachable)
    next_sweep_seconds: int = 300  # the worker's SEGMENT_SWEEP_SECONDS


# --- webhook, assign_owner and send_push steps ---------------------------------------------------


class WebhookCall(_Message):
    idempotency_key: str  # <enrollment>:<step>:<visit>, sent as Idempotency-Key
    enrollment_id: uuid.UUID
    contact_id: uuid.UUID
    journey_key: str
    step: str
    webhook: WebhookStep


class WebhookResult(_Message):
    status: int = 0  # 0: not called (the contact was deleted)
    saved: dict[str, JsonValue] = Field(default_factory=dict)
    skipped: str | None = None


class OwnerRequest(_Message):
    operation_key: str  # one turn per key, whatever the retries
    contact_id: uuid.UUID
    team: str


class OwnerChosen(_Message):
    team: str
    name: str
    email: str
    turn: int


class PushRequest(_Message):
    idempotency_key: str
    enrollment_id: uuid.UUID
    contact_id: uuid.UUID
    journey_key: str
    step: str
    push: SendPushStep
    progress: list[StepEntered] = Field(default_factory=list)
    # The send rules, as for a SendRequest (nurture.sending.gate decides a push the same way).
    channel: Literal["push"] = "push"
    visit: int = 0
    at: datetime | None = None
    transactional: bool = False
    on_cap: Literal["delay", "skip"] = "delay"
    quiet_hours: list[QuietHours] | None = None
    time_zone: str | None = None
    held_since: datetime | None = None
    expires_after: timedelta | None = None


class PushResult(_Message):
    status: Literal["sent", "skipped", "failed", "held"]
    reason: str | None = None
    until: datetime | None = None  # held: when to try again
    rule: str | None = None  # held or skipped by a send rule
    devices: int = 0  # tokens it reached
    removed: int = 0  # tokens dropped as no longer valid
