"""Validate a journey definition and report every problem with the place it is at.

Schema errors come from pydantic; graph errors (unknown targets, unreachable steps, loops that
never wait, waits for steps that send nothing) are checked here. Either way the caller gets one
`InvalidJourney` listing all of them, e.g. ``steps.wait_click.on_timeout: unknown step "nuge"``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from nurture.journeys.definition import (
    WAITING_STEP_TYPES,
    AllCondition,
    AnyCondition,
    BranchStep,
    ClickedCondition,
    ClickEvent,
    Condition,
    JourneyDefinition,
    NotCondition,
    OpenedCondition,
    OpenEvent,
    SendEmailStep,
    SendSmsStep,
    Step,
    WaitForStep,
    step_targets,
)
from nurture.nesting import definition_problems


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidJourney(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("invalid journey:\n" + "\n".join(f"  {p}" for p in problems))


def validate_journey(data: Mapping[str, Any] | JourneyDefinition) -> JourneyDefinition:
    """Parse and check a definition; raise `InvalidJourney` listing every problem found."""
    if isinstance(data, JourneyDefinition):
        definition = data
    else:
        # Before pydantic: too deep, and parsing it could itself fail (nurture.nesting).
        if bounds := definition_problems(data):
            raise InvalidJourney([Problem(path, message) for path, message in bounds])
        try:
            definition = JourneyDefinition.model_validate(data)
        except ValidationError as err:
            raise InvalidJourney(_schema_problems(err)) from None
    problems = list(_graph_problems(definition))
    if problems:
        raise InvalidJourney(problems)
    return definition


# Pydantic puts the tag of a tagged union into the error location ("steps.a.wait.duration");
# people think of "steps.a.duration", so the tag is dropped where a union value sits.
_UNION_PARENTS = {"trigger", "criteria", "condition", "event"}


def _schema_problems(err: ValidationError) -> list[Problem]:
    problems = []
    for error in err.errors(include_url=False):
        loc = list(error["loc"])
        kept: list[str | int] = []
        dropped: set[int] = set()
        for i, part in enumerate(loc):
            parent = loc[i - 1] if i and (i - 1) not in dropped else None
            at_union = (
                parent in _UNION_PARENTS
                or (i == 2 and loc[0] == "steps")
                or (isinstance(parent, int) and i >= 2 and loc[i - 2] == "conditions")
            )
            if at_union and isinstance(part, str):
                dropped.add(i)
                continue
            kept.append(part)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "union_tag_invalid":
            ctx = error.get("ctx", {})
            message = f"unknown type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
        problems.append(Problem(".".join(str(p) for p in kept), message))
    return problems


def _graph_problems(definition: JourneyDefinition) -> Iterator[Problem]:
    steps = definition.steps
    if definition.start not in steps:
        yield Problem("start", f'unknown step "{definition.start}"')
    for step_id, step in steps.items():
        for place, target in step_targets(step):
            if target is not None and target not in steps:
                yield Problem(f"steps.{step_id}.{place}", f'unknown step "{target}"')

    reachable = _reachable(definition.start, steps)
    for step_id in steps:
        if step_id not in reachable and definition.start in steps:
            yield Problem(
                f"steps.{step_id}", f'unreachable from the start step "{definition.start}"'
            )

    yield from _loops_without_wait(steps)

    for step_id, step in steps.items():
        if isinstance(step, WaitForStep) and isinstance(step.event, OpenEvent | ClickEvent):
            yield from _check_message_reference(
                f"steps.{step_id}.event.step",
                step.event.step,
                steps,
                opens=isinstance(step.event, OpenEvent),
            )
            sender = steps.get(step.event.step)
            if isinstance(sender, SendEmailStep | SendSmsStep) and step_id not in _reachable_after(
                step.event.step, steps
            ):
                yield Problem(
                    f"steps.{step_id}.event.step",
                    f'step "{step.event.step}" never runs before "{step_id}"',
                )
        if isinstance(step, BranchStep):
            for i, rule in enumerate(step.rules):
                yield from _check_condition(
                    f"steps.{step_id}.rules.{i}.condition", rule.condition, steps
                )
    if definition.goal is not None:
        yield from _check_condition("goal.criteria", definition.goal.criteria, steps)
    for step_id, step in steps.items():
        yield from step_problems(f"steps.{step_id}", step)


def _check_message_reference(
    path: str, ref: str, steps: Mapping[str, Step], *, opens: bool
) -> Iterator[Problem]:
    target = steps.get(ref)
    if target is None:
        yield Problem(path, f'unknown step "{ref}"')
    elif not isinstance(target, SendEmailStep | SendSmsStep):
        yield Problem(path, f'step "{ref}" ({target.type}) sends nothing')
    elif opens and isinstance(target, SendSmsStep):
        yield Problem(path, f'step "{ref}" sends an SMS, and SMS opens are not tracked')


def _check_condition(
    path: str, condition: Condition, steps: Mapping[str, Step]
) -> Iterator[Problem]:
    match condition:
        case OpenedCondition(step=str(ref)):
            yield from _check_message_reference(f"{path}.step", ref, steps, opens=True)
        case ClickedCondition(step=str(ref)):
            yield from _check_message_reference(f"{path}.step", ref, steps, opens=False)
        case AllCondition() | AnyCondition():
            for i, inner in enumerate(condition.conditions):
                yield from _check_condition(f"{path}.conditions.{i}", inner, steps)
        case NotCondition():
            yield from _check_condition(f"{path}.condition", condition.condition, steps)


def _successors(step: Step, steps: Mapping[str, Step]) -> list[str]:
    return [t for _, t in step_targets(step) if t is not None and t in steps]


def _reachable(start: str, steps: Mapping[str, Step]) -> set[str]:
    seen: set[str] = set()
    todo = [start] if start in steps else []
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(_successors(steps[current], steps))
    return seen


def _reachable_after(origin: str, steps: Mapping[str, Step]) -> set[str]:
    """Steps that can run after `origin` (not counting origin itself unless it loops back)."""
    seen: set[str] = set()
    todo = list(_successors(steps[origin], steps))
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(_successors(steps[current], steps))
    return seen


def _loops_without_wait(steps: Mapping[str, Step]) -> Iterator[Problem]:
    """A cycle made only of instant steps would spin (and send) forever without sleeping."""
    instant = {sid for sid, step in steps.items() if step.type not in WAITING_STEP_TYPES}
    reported: set[frozenset[str]] = set()
    for component in _strongly_connected(instant, steps):
        members = frozenset(component)
        first = min(component)
        is_cycle = len(component) > 1 or first in _successors(steps[first], steps)
        if is_cycle and members not in reported:
            reported.add(members)
            yield Problem(
                f"steps.{first}",
                "loop with no wait in it: " + " -> ".join([*sorted(component), first]),
            )


def _strongly_connected(nodes: set[str], steps: Mapping[str, Step]) -> list[list[str]]:
    """Tarjan's algorithm over the sub-graph of `nodes` (iterative, so deep graphs are fine)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter([s for s in _successors(steps[root], steps) if s in nodes]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    grand = [s for s in _successors(steps[child], steps) if s in nodes]
                    work.append((child, iter(grand)))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


def step_problems(path: str, step: Step) -> Iterator[Problem]:
    """The rules of the split, webhook and push steps (see `nurture.journeys.step_checks`)."""
    from nurture.journeys.step_checks import step_problems as check

    for place, message in check(step):
        yield Problem(f"{path}.{place}" if place else path, message)
