"""What a simulation answers, per contact: the path in virtual time, each message as it would
have been sent, the waits, the branch decisions with the values they saw, the goal and the exit.

Decisions are the workflow's own (its path says which rule matched); the values shown with
them are read back from what the stand-ins gave the workflow (the contact's facts at that
moment) and the behaviour delivered before it, evaluated with the same condition code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, JsonValue

from nurture.contracts import ContactFacts, EnrollmentEvent, PathEntry, ReceivedEvent
from nurture.journeys.conditions import Engagement, evaluate
from nurture.journeys.definition import (
    AllCondition,
    AnyCondition,
    BranchStep,
    ClickedCondition,
    Condition,
    EventCondition,
    FieldCondition,
    JourneyDefinition,
    ListCondition,
    NotCondition,
    OpenedCondition,
    TagCondition,
)


class SimulatedLink(BaseModel):
    name: str
    url: str


class SimulatedMessage(BaseModel):
    channel: str
    template: str
    template_version: int | None = None
    status: str  # sent (would be sent), skipped, failed
    reason: str | None = None
    to: str | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    links: list[SimulatedLink] = []
    data: dict[str, JsonValue] | None = None  # push: the rendered data


class SimulatedHold(BaseModel):
    """A send rule that held, delayed or skipped the step's send (docs/send-rules.md)."""

    at: datetime
    offset: str
    rule: str  # quiet_hours | frequency_cap | expired
    action: str  # held | delayed | skipped
    detail: str
    until: datetime | None = None


class SimulatedWebhook(BaseModel):
    """The call a webhook step would make (never made in a simulation), and the answer the
    script gave it."""

    would_call: str  # "POST https://crm.example.com/leads"
    headers: dict[str, str]
    body: JsonValue = None
    response_status: int
    attempts: int
    saved: dict[str, JsonValue] = {}


class DecisionCheck(BaseModel):
    condition: str
    saw: JsonValue
    result: bool


class DecisionRule(BaseModel):
    rule: int
    next: str | None
    result: bool
    checks: list[DecisionCheck]


class BranchDecision(BaseModel):
    taken: str  # "rule 0" | "default"
    next: str | None
    rules: list[DecisionRule]


class SimulatedStep(BaseModel):
    step: str
    type: str
    visit: int
    entered_at: datetime
    offset: str  # from entry, e.g. "1d2h"
    left_at: datetime | None = None
    outcome: str | None = None
    waited: str | None = None  # waits: how long the contact stayed
    message: SimulatedMessage | None = None
    decision: BranchDecision | None = None
    changed: dict[str, Any] | None = None
    holds: list[SimulatedHold] = []
    webhook: SimulatedWebhook | None = None


class SimulatedBehaviourOutcome(BaseModel):
    behaviour: str
    due_at: datetime | None
    offset: str | None
    delivered: bool
    note: str | None = None


class SimulatedChange(BaseModel):
    at: datetime
    offset: str
    by: str
    changed: dict[str, Any]


class SimulatedGoal(BaseModel):
    name: str | None
    met: bool
    at: datetime | None = None
    offset: str | None = None


class SimulatedContactState(BaseModel):
    fields: dict[str, JsonValue]
    tags: list[str]
    lists: list[str]


class SimulatedContactReport(BaseModel):
    label: str
    contact: str | None  # the existing contact it was a copy of
    status: str  # completed | exited | not_enrolled | failed | running (at the horizon)
    reason: str | None
    entered_at: datetime
    ended_at: datetime | None
    duration: str | None
    path: list[SimulatedStep]
    sends: int  # messages that would have been sent
    send_holds: dict[str, int] = {}  # held / delayed / skipped by a send rule: how many
    goal: SimulatedGoal | None
    behaviour: list[SimulatedBehaviourOutcome]
    changes: list[SimulatedChange]
    contact_at_end: SimulatedContactState


class SimulationReport(BaseModel):
    journey: str
    version: str  # "draft" or the version number
    started_at: datetime  # virtual: the moment everyone entered
    horizon: str
    wall_seconds: float
    contacts: list[SimulatedContactReport]


def offset(start: datetime, moment: datetime, *, rounded: bool = False) -> str:
    """Virtual time from `start` to `moment` in days, hours, minutes and seconds ("180d5h").

    While a step works the clock runs with the wall clock, so moments carry some milliseconds
    past their round figure: an offset from entry drops them (under a second is "0s"); the
    length of a wait (`rounded`), whose two ends both carry some, is rounded."""
    elapsed = (moment - start).total_seconds()
    seconds = round(elapsed) if rounded else int(elapsed)
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def decision_of(
    step: BranchStep,
    entry: PathEntry,
    facts: ContactFacts,
    events: list[EnrollmentEvent],
    visits: dict[str, int],
) -> BranchDecision:
    engagement = Engagement(
        events=[
            ReceivedEvent(seq=i + 1, event=event, received_at=entry.entered_at)
            for i, event in enumerate(events)
        ],
        latest_visit=visits,
    )
    rules = [
        DecisionRule(
            rule=i,
            next=rule.next,
            result=evaluate(rule.condition, facts, engagement),
            checks=list(_checks(rule.condition, facts, engagement)),
        )
        for i, rule in enumerate(step.rules)
    ]
    taken = entry.outcome or ""
    if taken.startswith("rule "):
        index = int(taken.split()[1])
        return BranchDecision(taken=f"rule {index}", next=step.rules[index].next, rules=rules)
    return BranchDecision(taken="default", next=step.default, rules=rules)


def _checks(condition: Condition, facts: ContactFacts, engagement: Engagement) -> Any:
    """The leaves of a condition: what each compares, what it saw, and what it found."""
    result = evaluate(condition, facts, engagement)
    match condition:
        case AllCondition() | AnyCondition():
            for inner in condition.conditions:
                yield from _checks(inner, facts, engagement)
            return
        case NotCondition():
            for check in _checks(condition.condition, facts, engagement):
                yield check.model_copy(
                    update={"condition": f"not ({check.condition})", "result": not check.result}
                )
            return
        case FieldCondition():
            shown = "" if condition.value is None else f" {condition.value!r}"
            text, saw = f"field {condition.field} {condition.op}{shown}", _field(facts, condition)
        case TagCondition():
            text, saw = f"has tag {condition.tag}", list(facts.tags)
        case ListCondition():
            text, saw = f"in list {condition.list}", list(facts.lists)
        case OpenedCondition():
            text = f"opened {condition.step or 'any message'} at least {condition.min_count}x"
            saw = engagement.opens(condition.step)
        case ClickedCondition():
            link = f"link {condition.link}" if condition.link else "a link"
            where = condition.step or "any message"
            text = f"clicked {link} in {where} at least {condition.min_count}x"
            saw = engagement.clicks(condition.step, condition.link)
        case EventCondition():
            text = f"event {condition.name} at least {condition.min_count}x"
            saw = engagement.custom(condition.name)
        case _:
            text, saw = condition.type, None
    yield DecisionCheck(condition=text, saw=saw, result=result)


def _field(facts: ContactFacts, condition: FieldCondition) -> JsonValue:
    if condition.field in ("email", "phone"):
        return facts.has_email if condition.field == "email" else facts.has_phone
    if condition.field == "time_zone":
        return facts.time_zone
    return facts.fields.get(condition.field)


def goal_of(definition: JourneyDefinition) -> str | None:
    return definition.goal.name if definition.goal else None


def as_text(report: SimulationReport) -> str:
    """The report for a terminal (`nurture simulate`): one line per step, then the script."""
    lines = [
        f"{report.journey} ({report.version}): {len(report.contacts)} contact(s), entering at "
        f"{report.started_at:%Y-%m-%d %H:%M} UTC (virtual), horizon {report.horizon}, "
        f"{report.wall_seconds:.2f} s"
    ]
    for contact in report.contacts:
        ending = f"{contact.status}" + (f" ({contact.reason})" if contact.reason else "")
        after = f" after {contact.duration}" if contact.duration else ""
        lines.append(f"\n{contact.label}: {ending}{after}, {contact.sends} message(s)")
        width = max((len(step.step) for step in contact.path), default=0)
        for step in contact.path:
            lines.append(f"  +{step.offset:<10} {step.step:<{width}}  {_step_text(step)}")
            for hold in step.holds:
                lines.append(f"  +{hold.offset:<10} {'':<{width}}    {hold.action}: {hold.detail}")
        if contact.goal is not None and contact.goal.met:
            lines.append(f"  goal {contact.goal.name or ''} met at +{contact.goal.offset}")
        for done in contact.behaviour:
            state = f"at +{done.offset}" if done.delivered else "not delivered"
            note = f" ({done.note})" if done.note else ""
            lines.append(f"  behaviour: {done.behaviour}: {state}{note}")
    return "\n".join(lines)


def _step_text(step: SimulatedStep) -> str:
    if step.webhook is not None:
        hook = step.webhook
        return (
            f"would call {hook.would_call}: {step.outcome} (scripted HTTP {hook.response_status})"
        )
    if step.message is not None:
        message = step.message
        if message.status != "sent":
            return f"{message.channel} {message.template}: {message.status} ({message.reason})"
        subject = f' "{message.subject}"' if message.subject else ""
        links = ", ".join(link.name for link in message.links)
        return f"{message.channel} {message.template}{subject} to {message.to}" + (
            f"; links: {links}" if links else ""
        )
    if step.decision is not None:
        decision = step.decision
        seen = "; ".join(
            f"{check.condition}: saw {check.saw!r}"
            for rule in decision.rules
            for check in rule.checks
        )
        return f"{decision.taken} -> {decision.next or 'end'} ({seen})"
    if step.changed is not None:
        return f"{step.type}: {step.changed}"
    if step.waited is not None:
        return f"{step.type}: {step.outcome} ({step.waited})"
    return f"{step.type}: {step.outcome}" if step.outcome else step.type
