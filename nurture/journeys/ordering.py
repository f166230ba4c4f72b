"""Definitions read back in the order they were written.

Drafts and versions are stored as jsonb, which sorts object keys (shortest first), so a draft
written `welcome, wait_1d, thanks` came back `thanks, wait_1d, welcome`. The order is kept
beside the document instead (`Journey.draft_order`, `JourneyVersion.definition_order`): a
small tree giving the key order of every object in it, taken when the document is saved and
applied when it is read. jsonb stays jsonb, so the SQL that looks inside definitions
(`definition -> 'trigger' ->> 'segment'`) is unchanged.

Rows saved before the order was kept have none: they are read in journey order, the
top-level keys in the order of docs/journeys.md and the steps from `start`, following each
step's exits (`next`, `on_event`, `on_timeout`, each rule's `next`, `default`), with any step
not reached after them.
"""

from __future__ import annotations

from typing import Any

# {"k": [keys in order], "c": {key: subtree}} for an object; {"i": [subtree | None, ...]} for
# an array holding objects; None where there is nothing to order.
OrderTree = dict[str, Any] | None

TOP_LEVEL = (
    "key",
    "name",
    "description",
    "owner",
    "tags",
    "trigger",
    "entry",
    "goal",
    "time_zone",
    "start",
    "steps",
)
_EXITS = ("next", "on_event", "on_timeout")


def capture(value: Any) -> OrderTree:
    """The key order of every object in `value` (a document as written, before jsonb)."""
    if isinstance(value, dict):
        children = {key: sub for key, item in value.items() if (sub := capture(item))}
        node: dict[str, Any] = {"k": list(value)}
        if children:
            node["c"] = children
        return node
    if isinstance(value, list):
        items = [capture(item) for item in value]
        return {"i": items} if any(items) else None
    return None


def restore(value: Any, tree: OrderTree) -> Any:
    """`value` with its objects' keys in the order `tree` recorded; keys it does not know
    keep their place after the known ones."""
    if not tree:
        return value
    if isinstance(value, dict) and "k" in tree:
        keys = [key for key in tree["k"] if key in value]
        keys += [key for key in value if key not in set(keys)]
        children = tree.get("c", {})
        return {key: restore(value[key], children.get(key)) for key in keys}
    if isinstance(value, list) and "i" in tree:
        items = tree["i"]
        return [
            restore(item, items[index] if index < len(items) else None)
            for index, item in enumerate(value)
        ]
    return value


def in_order(document: dict[str, Any], tree: OrderTree) -> dict[str, Any]:
    """The stored document in its written order, or in journey order when none was kept."""
    if tree:
        return dict(restore(document, tree))
    return journey_order(document)


def journey_order(document: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys in the documented order, steps from `start` along their exits."""
    known = [key for key in TOP_LEVEL if key in document]
    ordered = {key: document[key] for key in known + sorted(set(document) - set(known))}
    steps = document.get("steps")
    if isinstance(steps, dict):
        ordered["steps"] = {step_id: steps[step_id] for step_id in step_walk(document)}
    return ordered


def step_walk(document: dict[str, Any]) -> list[str]:
    """Step ids depth first from `start`, each exit in order; unreached steps last (sorted)."""
    steps = document.get("steps")
    if not isinstance(steps, dict):
        return []
    seen: list[str] = []
    pending = [document.get("start")]
    while pending:
        step_id = pending.pop()
        if not isinstance(step_id, str) or step_id not in steps or step_id in seen:
            continue
        seen.append(step_id)
        # Reversed onto the stack, so the first exit is walked first.
        pending.extend(reversed(_targets(steps[step_id])))
    return seen + sorted(step_id for step_id in steps if step_id not in seen)


def _targets(step: Any) -> list[Any]:
    if not isinstance(step, dict):
        return []
    targets = [step.get(place) for place in _EXITS]
    rules = step.get("rules")
    if isinstance(rules, list):
        targets += [rule.get("next") for rule in rules if isinstance(rule, dict)]
    targets.append(step.get("default"))
    return [target for target in targets if target is not None]
