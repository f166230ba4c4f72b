"""Bounds on the shape of JSON that we keep and later run: how deep it nests, how big it is.

Checked on the raw data, before pydantic parses it, and without recursion: a goal nested 900
deep used to blow pydantic's recursion limit while a draft was saved (500), and one nested 200
deep was accepted, published and enrolled, and then the worker could not decode the workflow
input, so the enrollment stayed `pending` forever. Whatever is refused here, with the path to
the place, is what the worker could not run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

# Any JSON we accept (request bodies, stored definitions): objects and arrays inside each other.
MAX_JSON_DEPTH = 64
# all / any / not inside each other, in a journey's goal and branch conditions or a segment
# filter: far more than anyone writes by hand, far less than any parser's recursion limit.
MAX_CONDITION_DEPTH = 20
# A journey definition travels in every enrollment's workflow input (and each continue-as-new).
MAX_DEFINITION_BYTES = 256 * 1024
MAX_STEPS = 300

LOGICAL = frozenset({"all", "any", "not"})


def _join(path: str, part: str | int) -> str:
    # A key may hold what is refused (an unpaired surrogate): the path must still be printable.
    text = str(part).encode("utf-8", "backslashreplace").decode()
    return f"{path}.{text}" if path else text


def too_deep(data: Any, max_depth: int = MAX_JSON_DEPTH, path: str = "") -> str | None:
    """The path of the first object or array nested deeper than `max_depth`, or None."""
    stack: list[tuple[Any, str, int]] = [(data, path, 1)]
    while stack:
        value, at, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Sequence[tuple[str | int, Any]] = list(value.items())
        elif isinstance(value, list | tuple):
            children = list(enumerate(value))
        else:
            continue
        if depth > max_depth:
            return at
        stack.extend((child, _join(at, key), depth + 1) for key, child in reversed(children))
    return None


def conditions_too_deep(
    data: Any, max_depth: int = MAX_CONDITION_DEPTH, path: str = ""
) -> str | None:
    """The path of the first `all`/`any`/`not` nested inside more than `max_depth - 1`
    others (counting itself, more than `max_depth` deep), or None."""
    stack: list[tuple[Any, str, int]] = [(data, path, 0)]
    while stack:
        value, at, nesting = stack.pop()
        if isinstance(value, Mapping):
            if value.get("type") in LOGICAL:
                nesting += 1
                if nesting > max_depth:
                    return at
            children: Sequence[tuple[str | int, Any]] = list(value.items())
        elif isinstance(value, list | tuple):
            children = list(enumerate(value))
        else:
            continue
        stack.extend((child, _join(at, key), nesting) for key, child in reversed(children))
    return None


def json_bytes(data: Any) -> int | None:
    """Size as compact JSON; None if it cannot be written as JSON at all."""
    try:
        return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
    except (TypeError, ValueError, RecursionError):
        return None


def definition_problems(data: Any) -> list[tuple[str, str]]:
    """What makes a journey definition (raw JSON) too big or too deep to run: (path, message).

    Run before parsing: past these, parsing itself could fail (recursion)."""
    if (deep := too_deep(data)) is not None:
        return [(deep, f"nested more than {MAX_JSON_DEPTH} objects and arrays deep")]
    problems: list[tuple[str, str]] = []
    size = json_bytes(data)
    if size is not None and size > MAX_DEFINITION_BYTES:
        problems.append(
            (
                "",
                f"the definition is {size} bytes as JSON, over the limit of {MAX_DEFINITION_BYTES}",
            )
        )
    steps = data.get("steps") if isinstance(data, Mapping) else None
    if isinstance(steps, Mapping) and len(steps) > MAX_STEPS:
        problems.append(("steps", f"{len(steps)} steps, over the limit of {MAX_STEPS}"))
    if (deep := conditions_too_deep(data)) is not None:
        problems.append(
            (deep, f"conditions (all, any, not) nested more than {MAX_CONDITION_DEPTH} deep")
        )
    if isinstance(steps, Mapping):
        problems += _oversized_sets(steps)
    return problems


def _oversized_sets(steps: Mapping[str, Any]) -> list[tuple[str, str]]:
    """`update_contact` values the contact size limits would refuse at every run."""
    from nurture.audience.limits import SizeLimits  # settings: only when there are steps

    limits = SizeLimits.of()
    problems: list[tuple[str, str]] = []
    for step_id, step in steps.items():
        if isinstance(step, Mapping) and step.get("type") == "update_contact":
            values = step.get("set")
            if isinstance(values, Mapping):
                problems += limits.field_problems(values, prefix=f"steps.{step_id}.set")
    return problems


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate (e.g. \\ud800), which is not Unicode text"
    return None


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored in PostgreSQL (text or jsonb), or None."""
    return _text_problem(text)


def unstorable(
    data: Any, path: str = "", max_depth: int = MAX_JSON_DEPTH
) -> tuple[str, str] | None:
    """The first place where parsed JSON cannot be kept as it is, as (path, message): nested
    deeper than `max_depth`, a string or key with a NUL or an unpaired surrogate (PostgreSQL
    refuses both in text and jsonb), a number that is not finite (NaN, Infinity: not JSON).
    Without recursion, so any depth is safe to check."""
    stack: list[tuple[Any, str, int]] = [(data, path, 1)]
    while stack:
        value, at, depth = stack.pop()
        if isinstance(value, str):
            if (problem := _text_problem(value)) is not None:
                return at, problem
            continue
        if isinstance(value, float) and not math.isfinite(value):
            return at, "a number that is not finite (NaN or Infinity) is not JSON"
        if isinstance(value, Mapping):
            children: Sequence[tuple[str | int, Any]] = list(value.items())
            for key in value:
                if isinstance(key, str) and (problem := _text_problem(key)) is not None:
                    return _join(at, key), f"the key {problem}"
        elif isinstance(value, list | tuple):
            children = list(enumerate(value))
        else:
            continue
        if depth > max_depth:
            return at, f"nested more than {max_depth} objects and arrays deep"
        stack.extend((child, _join(at, key), depth + 1) for key, child in reversed(children))
    return None
