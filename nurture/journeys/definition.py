"""A journey definition: the data a marketer drafts and publishes as an immutable version.

The shape is deliberately plain JSON: every union is tagged by a ``type`` field, every step names
its targets explicitly, and nothing here does I/O, so the enrollment workflow can interpret it
deterministically. Graph-level rules (unknown targets, unreachable steps, ...) live in
`nurture.journeys.validation`.
"""

from __future__ import annotations

from datetime import datetime, time
from functools import cache
from typing import Annotated, Any, Literal
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    field_validator,
    model_validator,
)

from nurture.journeys.durations import Duration
from nurture.sending.windows import QuietHours

StepId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
Key = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Email = Annotated[str, StringConstraints(max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
JourneyTag = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class _Strict(BaseModel):
    """Unknown keys are refused, so a typo such as "nxet" is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@cache
def _known_time_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def check_time_zone(name: str) -> str:
    # Only names from the IANA list: "Europe" (a folder) or "localtime" (a host file) would
    # load on some machines and not others.
    if name not in _known_time_zones():
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'Europe/Warsaw')")
    return name


TimeZone = Annotated[str, AfterValidator(check_time_zone), Field(examples=["Europe/Warsaw"])]


# --- conditions (branches and goals) -------------------------------------------------------------

FieldOperator = Literal[
    "eq", "ne", "contains", "not_contains", "gt", "gte", "lt", "lte", "in", "not_in",
    "exists", "not_exists",
]  # fmt: skip


class FieldCondition(_Strict):
    """A contact field compared with a value; standard fields are email, phone, time_zone."""

    type: Literal["field"]
    field: FieldName
    op: FieldOperator = "eq"
    value: JsonValue = None

    @model_validator(mode="after")
    def _value_fits_operator(self) -> FieldCondition:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"operator {self.op!r} needs a list as value")
        if self.op not in ("exists", "not_exists") and self.value is None:
            raise ValueError(f"operator {self.op!r} needs a value")
        return self


class TagCondition(_Strict):
    type: Literal["tag"]
    tag: str = Field(min_length=1)


class ListCondition(_Strict):
    type: Literal["in_list"]
    list: Key


class OpenedCondition(_Strict):
    """The contact opened (or clicked, which proves an open) a message of this journey."""

    type: Literal["opened"]
    step: StepId | None = Field(default=None, description="a send step; none means any message")
    min_count: int = Field(default=1, ge=1)


class ClickedCondition(_Strict):
    type: Literal["clicked"]
    step: StepId | None = Field(default=None, description="a send step; none means any message")
    link: str | None = Field(default=None, description="a named link; none means any link")
    min_count: int = Field(default=1, ge=1)


class EventCondition(_Strict):
    """A custom event (e.g. "purchase") received during this enrollment."""

    type: Literal["event"]
    name: str = Field(min_length=1)
    min_count: int = Field(default=1, ge=1)


class AllCondition(_Strict):
    type: Literal["all"]
    conditions: list[Condition] = Field(min_length=1)


class AnyCondition(_Strict):
    type: Literal["any"]
    conditions: list[Condition] = Field(min_length=1)


class NotCondition(_Strict):
    type: Literal["not"]
    condition: Condition


Condition = Annotated[
    FieldCondition
    | TagCondition
    | ListCondition
    | OpenedCondition
    | ClickedCondition
    | EventCondition
    | AllCondition
    | AnyCondition
    | NotCondition,
    Field(discriminator="type"),
]


# --- triggers and entry rules --------------------------------------------------------------------


class ApiTrigger(_Strict):
    """Contacts enter only when enrolled through the API."""

    type: Literal["api"]


class ListJoinedTrigger(_Strict):
    type: Literal["list_joined"]
    list: Key
    only_new: bool = Field(
        default=True, description="only contacts added after publishing, not existing members"
    )


class SegmentEnteredTrigger(_Strict):
    type: Literal["segment_entered"]
    segment: Key


class SegmentTrigger(_Strict):
    """A segment-based journey (seed 003): its audience is a segment, enrolled in batches.

    - once: the segment's members at the start time go through, once.
    - once_and_new: the same, and whoever joins the segment later enters when they join;
      each person goes through once, even if removed and re-added.
    - recurring: the segment is enrolled on a schedule (a cron expression in `time_zone`);
      the journey's re-entry rules decide who enters again on later runs."""

    type: Literal["segment"]
    segment: Key
    mode: Literal["once", "once_and_new", "recurring"] = "once"
    start_at: datetime | None = Field(
        default=None,
        description="local date and time of the first run in `time_zone`; unset: at publish",
    )
    time_zone: TimeZone = "UTC"
    cron: str | None = Field(
        default=None,
        description="recurring only: minute hour day-of-month month day-of-week, e.g. "
        "'0 9 * * MON' for Mondays at 9:00 in `time_zone`",
        examples=["0 9 * * MON"],
    )

    @model_validator(mode="after")
    def _schedule_fits_mode(self) -> SegmentTrigger:
        if self.mode == "recurring":
            if self.cron is None:
                raise ValueError("a recurring segment journey needs a cron schedule")
            if len(self.cron.split()) != 5:
                raise ValueError(
                    f"cron {self.cron!r} must have 5 fields: minute hour day month weekday"
                )
        elif self.cron is not None:
            raise ValueError(f"cron is for recurring journeys, not mode {self.mode!r}")
        if self.start_at is not None and self.start_at.tzinfo is not None:
            raise ValueError("start_at is a local date and time in time_zone, without offset")
        return self


class EventTrigger(_Strict):
    type: Literal["event"]
    name: str = Field(min_length=1)
    where: dict[str, JsonValue] = Field(
        default_factory=dict, description="event properties that must match exactly"
    )


Trigger = Annotated[
    ApiTrigger | ListJoinedTrigger | SegmentEnteredTrigger | SegmentTrigger | EventTrigger,
    Field(discriminator="type"),
]


class EntryRules(_Strict):
    reentry: Literal["never", "after_exit", "always"] = Field(
        default="never",
        description="never: once per contact; after_exit: again once the previous enrollment "
        "ended; always: at most one at a time, up to max_entries",
    )
    max_entries: int | None = Field(default=None, ge=1)
    exclusion_segment: Key | None = Field(
        default=None, description="contacts in this segment are never enrolled"
    )
    holdout_percent: float = Field(
        default=0,
        ge=0,
        lt=100,
        description="this share of entrants (chosen per contact, the same every time) is held "
        "out: enrolled in the control group, sent nothing, still measured against the goal",
    )


# --- steps ---------------------------------------------------------------------------------------


class _Step(_Strict):
    title: str | None = Field(default=None, description="a label for people; the id is the key")


OnCap = Literal["delay", "skip"]


class _SendStep(_Step):
    """What the send rules (docs/send-rules.md) need to know of a send step."""

    transactional: bool = Field(
        default=False,
        description="an order problem, a password reset: counted by frequency caps but never "
        "held by them or by quiet hours",
    )
    on_cap: OnCap | None = Field(
        default=None, description="a send over a frequency cap: delay or skip; unset: the journey's"
    )
    expires_after: Duration | None = Field(
        default=None,
        description="a send held (paused journey, cap, quiet hours, throttle) longer than this "
        "after the step was reached is skipped, never sent late",
        examples=["2d"],
    )

    @field_validator("expires_after")
    @classmethod
    def _expiry_positive(cls, value: Any) -> Any:
        if value is not None and value.total_seconds() <= 0:
            raise ValueError("expires_after must be positive")
        return value

    @model_validator(mode="after")
    def _send_rules_fit(self) -> _SendStep:
        if self.transactional and self.on_cap is not None:
            raise ValueError("a transactional send is never capped: on_cap does not apply")
        return self


class SendEmailStep(_SendStep):
    type: Literal["send_email"]
    template: str = Field(min_length=1)
    next: StepId | None = Field(default=None, description="no next step: the journey completes")


class SendSmsStep(_SendStep):
    type: Literal["send_sms"]
    template: str = Field(min_length=1)
    next: StepId | None = None


class WaitStep(_Step):
    """Wait a duration, until a date-time, or until a date field of the contact (+/- offset)."""

    type: Literal["wait"]
    duration: Duration | None = None
    until: datetime | None = Field(
        default=None, description="absolute; without an offset it is read in time_zone"
    )
    until_field: FieldName | None = Field(
        default=None, description="a contact field holding a date, e.g. renewal_date"
    )
    offset: Duration | None = Field(
        default=None, description="added to until_field, e.g. '-7d' for a week before"
    )
    at: time | None = Field(
        default=None, description="time of day for until_field, in the contact's time zone"
    )
    yearly: bool = Field(default=False, description="until_field recurs yearly (birthdays)")
    time_zone: TimeZone | None = Field(
        default=None, description="overrides the contact's and journey's time zone"
    )
    next: StepId | None = None

    @model_validator(mode="after")
    def _exactly_one_target(self) -> WaitStep:
        given = [n for n in ("duration", "until", "until_field") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "a wait needs exactly one of duration, until, until_field"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.until_field is None and (self.offset is not None or self.at or self.yearly):
            raise ValueError("offset, at and yearly apply only to until_field")
        if self.duration is not None and self.duration.total_seconds() <= 0:
            raise ValueError("duration must be positive")
        return self


class OpenEvent(_Strict):
    type: Literal["open"]
    step: StepId = Field(description="the send_email step whose message is opened")


class ClickEvent(_Strict):
    type: Literal["click"]
    step: StepId = Field(description="the send step whose message is clicked")
    link: str | None = Field(default=None, description="a named link; none means any link")


class CustomEvent(_Strict):
    type: Literal["custom"]
    name: str = Field(min_length=1)
    where: dict[str, JsonValue] = Field(
        default_factory=dict, description="event properties that must match exactly"
    )


AwaitedEvent = Annotated[OpenEvent | ClickEvent | CustomEvent, Field(discriminator="type")]


class WaitForStep(_Step):
    """Wait for an engagement or a custom event, at most `timeout`; two exits."""

    type: Literal["wait_for"]
    event: AwaitedEvent
    timeout: Duration
    on_event: StepId | None = None
    on_timeout: StepId | None = None

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if value.total_seconds() <= 0:
            raise ValueError("timeout must be positive")
        return value


class BranchRule(_Strict):
    condition: Condition
    next: StepId | None = None


class BranchStep(_Step):
    """The first rule whose condition holds decides the exit; otherwise `default`."""

    type: Literal["branch"]
    rules: list[BranchRule] = Field(min_length=1)
    default: StepId | None = None


class UpdateContactStep(_Step):
    type: Literal["update_contact"]
    set: dict[FieldName, JsonValue] = Field(default_factory=dict)
    unset: list[FieldName] = Field(default_factory=list)
    add_tags: list[str] = Field(default_factory=list)
    remove_tags: list[str] = Field(default_factory=list)
    increment: dict[FieldName, int | float] = Field(default_factory=dict)
    next: StepId | None = None

    @model_validator(mode="after")
    def _does_something(self) -> UpdateContactStep:
        if not (self.set or self.unset or self.add_tags or self.remove_tags or self.increment):
            raise ValueError(
                "update_contact needs at least one of set, unset, add_tags, remove_tags, increment"
            )
        clash = (set(self.set) & set(self.unset)) | (set(self.set) & set(self.increment))
        if clash:
            raise ValueError(f"fields changed twice in one step: {', '.join(sorted(clash))}")
        return self


class AddToListStep(_Step):
    type: Literal["add_to_list"]
    list: Key
    next: StepId | None = None


class RemoveFromListStep(_Step):
    type: Literal["remove_from_list"]
    list: Key
    next: StepId | None = None


class ExitStep(_Step):
    type: Literal["exit"]
    reason: str = Field(default="exit_step", min_length=1, max_length=64)


class SplitPath(_Strict):
    name: Key = Field(description="how the path is named on the path, timeline and reports")
    weight: int = Field(ge=0, le=100, description="percent of contacts; all weights sum to 100")
    next: StepId | None = None


class SplitStep(_Step):
    """A random split (A/B/n): each contact takes one path, chosen from a hash of the journey,
    the step and the contact, so the same contact takes the same path every time."""

    type: Literal["split"]
    paths: list[SplitPath] = Field(min_length=2, max_length=26)


HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class WebhookStep(_Step):
    """Call an outside HTTP endpoint (a CRM, Slack...): url, header values and the string
    leaves of `body` are templates; the call is signed, carries an idempotency key, and is
    retried with backoff on a 5xx or a timeout. A 4xx fails the step."""

    type: Literal["webhook"]
    method: HttpMethod = "POST"
    url: str = Field(min_length=1, max_length=2048)
    headers: dict[str, str] = Field(default_factory=dict)
    body: JsonValue = None
    timeout_seconds: float = Field(default=10, gt=0, le=60)
    retries: int = Field(default=5, ge=0, le=20, description="attempts after the first")
    save: dict[FieldName, str] = Field(
        default_factory=dict,
        description="contact field -> dotted path in the JSON response, e.g. "
        '{"crm_owner_id": "owner.id"}',
    )
    next: StepId | None = None
    on_failure: StepId | None = Field(
        default=None, description="where a failed call goes; unset: on to `next`"
    )


class AssignOwnerStep(_Step):
    """Assign the contact to the next owner of a team (round-robin or weighted, as the team
    says) and write the owner ({name, email, team}) into a contact field."""

    type: Literal["assign_owner"]
    team: Key
    field: FieldName = "owner"
    next: StepId | None = None


class SendPushStep(_SendStep):
    """A push notification to every device token of the contact; title, body and data
    values are templates."""

    type: Literal["send_push"]
    title: str = Field(min_length=1, max_length=1000)
    body: str = Field(min_length=1, max_length=4000)
    data: dict[str, str] = Field(default_factory=dict)
    next: StepId | None = None


Step = Annotated[
    SendEmailStep
    | SendSmsStep
    | WaitStep
    | WaitForStep
    | BranchStep
    | UpdateContactStep
    | AddToListStep
    | RemoveFromListStep
    | ExitStep
    | SplitStep
    | WebhookStep
    | AssignOwnerStep
    | SendPushStep,
    Field(discriminator="type"),
]
SendStep = SendEmailStep | SendSmsStep
WAITING_STEP_TYPES = frozenset({"wait", "wait_for"})


class Goal(_Strict):
    """Met at entry: not enrolled. Met later: unenrolled before the next action."""

    criteria: Condition
    name: str | None = None


class JourneyDefinition(_Strict):
    key: Key
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    trigger: Trigger = Field(default_factory=lambda: ApiTrigger(type="api"))
    entry: EntryRules = Field(default_factory=EntryRules)
    goal: Goal | None = None
    time_zone: TimeZone = Field(
        default="UTC", description="default for contacts that have no time zone of their own"
    )
    start: StepId
    steps: dict[StepId, Step] = Field(min_length=1)
    on_cap: OnCap = Field(
        default="delay",
        description="what a send over a frequency cap does: wait until the cap allows it, or "
        "be skipped; a send step's own on_cap wins",
    )
    quiet_hours: list[QuietHours] | None = Field(
        default=None,
        description="local times this journey sends nothing, replacing the workspace's; "
        "[]: none; unset: the workspace's",
    )
    # Seed 004's flow-design table: who owns the journey and whom it targets (listed and
    # filtered on in the API; nothing in the run depends on them).
    owner: Email | None = Field(default=None, description="the owner's email address")
    tags: list[JourneyTag] = Field(
        default_factory=list, max_length=50, description="target tags, e.g. 'new-users'"
    )


def step_targets(step: Step) -> list[tuple[str, str | None]]:
    """The exits of a step as (place, target) pairs; a None target completes the journey."""
    match step:
        case WaitForStep():
            return [("on_event", step.on_event), ("on_timeout", step.on_timeout)]
        case BranchStep():
            rules = [(f"rules.{i}.next", rule.next) for i, rule in enumerate(step.rules)]
            return [*rules, ("default", step.default)]
        case ExitStep():
            return []
        case SplitStep():
            return [(f"paths.{i}.next", path.next) for i, path in enumerate(step.paths)]
        case WebhookStep():
            return [("next", step.next), ("on_failure", step.on_failure or step.next)]
        case _:
            return [("next", step.next)]


def template_references(definition: JourneyDefinition) -> set[tuple[str, str]]:
    """(channel, template) pairs the journey sends, for "content ready" checks at publish."""
    refs: set[tuple[str, str]] = set()
    for step in definition.steps.values():
        if isinstance(step, SendEmailStep):
            refs.add(("email", step.template))
        elif isinstance(step, SendSmsStep):
            refs.add(("sms", step.template))
    return refs
