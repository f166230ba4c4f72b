"""Evaluate branch and goal conditions, and match events to `wait_for` steps.

Pure functions over facts the workflow already holds, so they are deterministic and cheap.
String comparisons ignore case ("Paid Customer" equals "paid customer"): marketers type values
by hand, and a segment that silently misses half its contacts is worse than a loose match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nurture.contracts import ContactFacts, EnrollmentEvent, ReceivedEvent
from nurture.journeys.definition import (
    AllCondition,
    AnyCondition,
    AwaitedEvent,
    BranchStep,
    ClickedCondition,
    ClickEvent,
    Condition,
    CustomEvent,
    EventCondition,
    FieldCondition,
    JourneyDefinition,
    ListCondition,
    NotCondition,
    OpenedCondition,
    OpenEvent,
    TagCondition,
    WaitStep,
)

_ADDRESS_FIELDS = {"email": "has_email", "phone": "has_phone"}


def fields_read(definition: JourneyDefinition) -> list[str]:
    """The custom fields that the journey's goal, branches and waits look at: all an enrollment
    needs to keep of its contact's fields (the rest stays out of its history)."""
    conditions: list[Condition] = [definition.goal.criteria] if definition.goal else []
    names: set[str] = set()
    for step in definition.steps.values():
        if isinstance(step, BranchStep):
            conditions += [rule.condition for rule in step.rules]
        elif isinstance(step, WaitStep) and step.until_field is not None:
            names.add(step.until_field)
    while conditions:
        condition = conditions.pop()
        match condition:
            case FieldCondition() if condition.field not in (*_ADDRESS_FIELDS, "time_zone"):
                names.add(condition.field)
            case AllCondition() | AnyCondition():
                conditions += condition.conditions
            case NotCondition():
                conditions.append(condition.condition)
    return sorted(names)


@dataclass(frozen=True)
class Engagement:
    """The events an enrollment has received, and which send of each step is the latest."""

    events: Sequence[ReceivedEvent]
    latest_visit: Mapping[str, int]

    def _of_latest_message(self, event: EnrollmentEvent, step: str | None) -> bool:
        if step is None:
            return True
        if event.step != step:
            return False
        return event.visit is None or event.visit == self.latest_visit.get(step)

    def opens(self, step: str | None) -> int:
        """Opens, where a click on a message with no recorded open counts as one open."""
        opened: list[tuple[str | None, int | None]] = []
        clicked: set[tuple[str | None, int | None]] = set()
        for received in self.events:
            event = received.event
            if not self._of_latest_message(event, step):
                continue
            if event.kind == "open":
                opened.append((event.step, event.visit))
            elif event.kind == "click":
                clicked.add((event.step, event.visit))
        return len(opened) + len(clicked - set(opened))

    def clicks(self, step: str | None, link: str | None) -> int:
        return sum(
            1
            for r in self.events
            if r.event.kind == "click"
            and self._of_latest_message(r.event, step)
            and (link is None or r.event.link == link)
        )

    def custom(self, name: str) -> int:
        return sum(1 for r in self.events if r.event.kind == "custom" and r.event.name == name)


def evaluate(condition: Condition, facts: ContactFacts, engagement: Engagement) -> bool:
    match condition:
        case FieldCondition():
            return _field_matches(condition, facts)
        case TagCondition():
            return _fold(condition.tag) in {_fold(t) for t in facts.tags}
        case ListCondition():
            return condition.list in facts.lists
        case OpenedCondition():
            return engagement.opens(condition.step) >= condition.min_count
        case ClickedCondition():
            return engagement.clicks(condition.step, condition.link) >= condition.min_count
        case EventCondition():
            return engagement.custom(condition.name) >= condition.min_count
        case AllCondition():
            return all(evaluate(c, facts, engagement) for c in condition.conditions)
        case AnyCondition():
            return any(evaluate(c, facts, engagement) for c in condition.conditions)
        case NotCondition():
            return not evaluate(condition.condition, facts, engagement)
    raise TypeError(f"unknown condition {condition!r}")  # pragma: no cover


def matches_awaited(
    awaited: AwaitedEvent, event: EnrollmentEvent, latest_visit: Mapping[str, int]
) -> bool:
    """Does `event` satisfy a wait_for? A click also satisfies a wait for an open."""
    match awaited:
        case OpenEvent():
            return event.kind in ("open", "click") and _same_message(
                awaited.step, event, latest_visit
            )
        case ClickEvent():
            return (
                event.kind == "click"
                and _same_message(awaited.step, event, latest_visit)
                and (awaited.link is None or event.link == awaited.link)
            )
        case CustomEvent():
            return (
                event.kind == "custom"
                and event.name == awaited.name
                and all(event.properties.get(k) == v for k, v in awaited.where.items())
            )
    raise TypeError(f"unknown awaited event {awaited!r}")  # pragma: no cover


def _same_message(step: str, event: EnrollmentEvent, latest_visit: Mapping[str, int]) -> bool:
    return event.step == step and (event.visit is None or event.visit == latest_visit.get(step))


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _field_value(name: str, facts: ContactFacts) -> tuple[bool, Any]:
    if name in _ADDRESS_FIELDS:
        present = bool(getattr(facts, _ADDRESS_FIELDS[name]))
        return present, None
    if name == "time_zone":
        return facts.time_zone is not None, facts.time_zone
    value = facts.fields.get(name)
    return value not in (None, ""), value


def _field_matches(condition: FieldCondition, facts: ContactFacts) -> bool:
    present, actual = _field_value(condition.field, facts)
    op, expected = condition.op, condition.value
    if op == "exists":
        return present
    if op == "not_exists":
        return not present
    if op in ("ne", "not_contains", "not_in") and not present:
        return True
    if not present:
        return False
    actual, expected = _fold(actual), _fold(expected)
    match op:
        case "eq":
            return bool(actual == expected)
        case "ne":
            return bool(actual != expected)
        case "contains" | "not_contains":
            if isinstance(actual, list):
                found = expected in [_fold(item) for item in actual]
            else:
                found = isinstance(actual, str) and str(expected) in actual
            return found if op == "contains" else not found
        case "in" | "not_in":
            found = actual in [_fold(item) for item in expected]
            return found if op == "in" else not found
        case "gt" | "gte" | "lt" | "lte":
            return _ordered(op, actual, expected)
    return False  # pragma: no cover


def _ordered(op: str, actual: Any, expected: Any) -> bool:
    numbers = (int, float)
    comparable = (
        isinstance(actual, numbers)
        and isinstance(expected, numbers)
        and not isinstance(actual, bool)
        and not isinstance(expected, bool)
    ) or (isinstance(actual, str) and isinstance(expected, str))  # ISO dates sort as text
    if not comparable:
        return False
    match op:
        case "gt":
            return bool(actual > expected)
        case "gte":
            return bool(actual >= expected)
        case "lt":
            return bool(actual < expected)
        case _:
            return bool(actual <= expected)
