"""What a simulation is asked to run: test contacts and a script of their behaviour.

A behaviour is one thing a contact does at a virtual moment, written the way a marketer says it:

    {"opens": "welcome", "after": "2h"}                 opens the welcome email 2 h after it is sent
    {"clicks": "welcome", "link": "shop", "after": "1d"}
    {"event": "purchase", "at": "3d"}                    a custom event on day 3 after entry
    {"set": {"lifecycle_stage": "customer"}, "at": "5d"} the contact changes on day 5
    {"join_list": "vip", "at": "1d"}                     joins a list (`leave_list` leaves one)

`at` counts from the contact's entry; `after` counts from the send of the message an open or
a click belongs to (for the other behaviours it is the same as `at`). An open or click of a
message that was never sent (the journey took another way, or the send was skipped) does not
happen, as it could not in production.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictBool, model_validator

from nurture.journeys.definition import (
    FieldName,
    JourneyDefinition,
    Key,
    SendEmailStep,
    StepId,
    TimeZone,
    WebhookStep,
)
from nurture.journeys.definition import SendSmsStep as _SendSms
from nurture.journeys.durations import Duration, format_duration

MAX_CONTACTS = 100  # about 10 s of a 2-core machine; more in one call would keep the client waiting
MAX_BEHAVIOURS = 100
DEFAULT_HORIZON = timedelta(days=400)
MAX_HORIZON = timedelta(days=3_660)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_KINDS = ("opens", "clicks", "event", "change", "join_list", "leave_list")


class SimulationBehaviour(_Strict):
    """One scripted action of a test contact (see the module docstring)."""

    opens: StepId | None = Field(default=None, description="opens the message of this send step")
    clicks: StepId | None = Field(
        default=None, description="clicks a link in the message of this send step"
    )
    link: str | None = Field(
        default=None, max_length=128, description="clicks: the named link; none: a link"
    )
    visit: int = Field(
        default=1, ge=1, description="opens/clicks: which send of the step (1: the first)"
    )
    event: str | None = Field(
        default=None, min_length=1, max_length=255, description="a custom event's name"
    )
    properties: dict[str, JsonValue] = Field(default_factory=dict)
    set: dict[FieldName, JsonValue] = Field(
        default_factory=dict, description="custom fields that change"
    )
    unset: list[FieldName] = Field(default_factory=list)
    add_tags: list[str] = Field(default_factory=list)
    remove_tags: list[str] = Field(default_factory=list)
    join_list: Key | None = None
    leave_list: Key | None = None
    at: Duration | None = Field(default=None, description="when, counted from entry")
    after: Duration | None = Field(
        default=None,
        description="opens/clicks: when, counted from the send of their message; "
        "otherwise the same as `at`",
    )

    @model_validator(mode="after")
    def _one_action_one_time(self) -> SimulationBehaviour:
        kinds = [k for k in _KINDS if self._has(k)]
        if len(kinds) != 1:
            raise ValueError(
                "a behaviour does exactly one of: opens, clicks, event, a change "
                "(set, unset, add_tags, remove_tags), join_list, leave_list"
                + (f" (got {', '.join(kinds)})" if kinds else "")
            )
        if (self.at is None) == (self.after is None):
            raise ValueError("a behaviour needs exactly one of at, after")
        if self.delay < timedelta(0):
            raise ValueError("a behaviour cannot happen before the contact enters")
        if self.link is not None and self.clicks is None:
            raise ValueError("link is for clicks")
        if self.properties and self.event is None:
            raise ValueError("properties are for events")
        return self

    def _has(self, kind: str) -> bool:
        if kind == "change":
            return bool(self.set or self.unset or self.add_tags or self.remove_tags)
        return getattr(self, kind) is not None

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if self._has(k))

    @property
    def delay(self) -> timedelta:
        value = self.at if self.at is not None else self.after
        assert value is not None
        return value

    @property
    def message_step(self) -> str | None:
        """The send step whose message this opens or clicks."""
        return self.opens or self.clicks

    @property
    def after_send(self) -> bool:
        """Timed from the send of its message rather than from entry."""
        return self.message_step is not None and self.after is not None

    def describe(self) -> str:
        """In words, for the report: "clicks link shop in welcome 1d after it is sent"."""
        when = (
            f"{format_duration(self.delay)} after it is sent"
            if self.after_send
            else f"at +{format_duration(self.delay)}"
        )
        visit = f" (send {self.visit})" if self.visit > 1 else ""
        match self.kind:
            case "opens":
                return f"opens {self.opens}{visit} {when}"
            case "clicks":
                link = f"link {self.link}" if self.link else "a link"
                return f"clicks {link} in {self.clicks}{visit} {when}"
            case "event":
                return f"event {self.event} {when}"
            case "join_list":
                return f"joins list {self.join_list} {when}"
            case "leave_list":
                return f"leaves list {self.leave_list} {when}"
        parts = [f"{name} becomes {value!r}" for name, value in self.set.items()]
        parts += [f"{name} is cleared" for name in self.unset]
        parts += [f"tag {tag} added" for tag in self.add_tags]
        parts += [f"tag {tag} removed" for tag in self.remove_tags]
        return f"{', '.join(parts)} {when}"


class SimulationContact(_Strict):
    """A contact to run through the journey: an existing one (`contact`), one described
    here, or an existing one with some values changed for the test. Given values replace the
    stored ones (`fields` are merged, `tags` and `lists` added)."""

    contact: str | None = Field(
        default=None,
        description="an existing contact: id:<uuid>, ext:<external id>, or a bare value",
        examples=["ada"],
    )
    label: str | None = Field(default=None, max_length=200, description="a name for the report")
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=32)
    time_zone: TimeZone | None = None
    fields: dict[FieldName, JsonValue] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    lists: list[Key] = Field(default_factory=list)
    consent: dict[str, Literal["granted", "revoked"]] = Field(default_factory=dict)
    segments: list[Key] = Field(
        default_factory=list,
        description="segments this test contact counts as a member of (the journey's "
        "exclusion segment); an existing contact's memberships are read from the database",
    )
    push_tokens: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list,
        max_length=20,
        description="device tokens of this test contact, for send_push steps (an existing "
        "contact's are read from the database)",
    )
    behaviour: list[SimulationBehaviour] = Field(default_factory=list, max_length=MAX_BEHAVIOURS)


class ScriptedResponse(_Strict):
    """What a webhook step's endpoint answers in a simulation (it is never called)."""

    status: int = Field(default=200, ge=200, le=599)
    json_body: JsonValue = Field(default_factory=dict, alias="json")


class SimulationRequest(_Strict):
    version: Literal["draft", "live"] | Annotated[int, Field(ge=1)] = Field(
        default="draft",
        description='what to simulate: "draft" (the default), "live" (the latest published '
        "version) or a version number",
    )
    contacts: list[SimulationContact] = Field(min_length=1, max_length=MAX_CONTACTS)
    behaviour: list[SimulationBehaviour] = Field(
        default_factory=list,
        max_length=MAX_BEHAVIOURS,
        description="behaviour of every contact, before each contact's own",
    )
    horizon: Duration = Field(
        default=DEFAULT_HORIZON,
        description="virtual time after which a contact still in the journey is reported "
        "as still running",
    )
    include_html: StrictBool = Field(default=False, description="also return each send's HTML")
    webhooks: dict[StepId, ScriptedResponse] = Field(
        default_factory=dict,
        description='the answer of each webhook step\'s endpoint, e.g. {"crm": {"status": 200, '
        '"json": {"owner": {"id": 7}}}}; unset: 200 with {}',
    )

    @model_validator(mode="after")
    def _horizon_bounded(self) -> SimulationRequest:
        if not timedelta(0) < self.horizon <= MAX_HORIZON:
            raise ValueError(f"horizon must be positive and at most {MAX_HORIZON.days}d")
        return self

    def behaviour_of(self, index: int) -> list[SimulationBehaviour]:
        return [*self.behaviour, *self.contacts[index].behaviour]


def script_problems(
    request: SimulationRequest, definition: JourneyDefinition
) -> list[dict[str, Any]]:
    """Behaviours that refer to what the journey does not have: `{path, message}` each, the
    path as a request body's (`contacts.0.behaviour.1.opens`)."""
    problems: list[dict[str, Any]] = []
    places = [("behaviour", b) for b in enumerate(request.behaviour)]
    for c, contact in enumerate(request.contacts):
        places += [(f"contacts.{c}.behaviour", b) for b in enumerate(contact.behaviour)]
    for prefix, (i, behaviour) in places:
        ref = behaviour.message_step
        if ref is None:
            continue
        name = "opens" if behaviour.opens else "clicks"
        step = definition.steps.get(ref)
        path = f"{prefix}.{i}.{name}"
        if step is None:
            problems.append({"path": path, "message": f'the journey has no step "{ref}"'})
        elif not isinstance(step, SendEmailStep | _SendSms):
            problems.append({"path": path, "message": f'step "{ref}" ({step.type}) sends nothing'})
        elif behaviour.opens and isinstance(step, _SendSms):
            problems.append(
                {"path": path, "message": f'step "{ref}" sends an SMS: opens are not tracked'}
            )
    for step_id in request.webhooks:
        target = definition.steps.get(step_id)
        if not isinstance(target, WebhookStep):
            what = f"is a {target.type} step" if target is not None else "is not a step"
            problems.append(
                {"path": f"webhooks.{step_id}", "message": f'"{step_id}" {what}, not a webhook'}
            )
    return problems
