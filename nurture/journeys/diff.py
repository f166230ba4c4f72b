"""What changed between two versions of a journey (or its draft and the live version).

A published version is never modified (seed 003), so a marketer needs to see what a new one
changes before publishing it, and what an old one did differently. `diff` compares two
definitions part by part: the steps (added, removed, changed, field by field), the trigger,
the entry rules, the goal, and the journey's own settings (name, description, owner, tags, time
zone, start). Each change is structured (`part`, `path`, `before`, `after`) and worded.

Both sides are compared with their defaults filled in (a draft that leaves out
`"reentry": "never"` does not differ from a version that spells it out); a draft too rough to
parse is compared as written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from nurture.journeys.definition import JourneyDefinition
from nurture.journeys.ordering import capture, restore

_SETTINGS = ("name", "description", "owner", "tags", "time_zone", "start")
_ENTRY_WORDS = {
    "reentry": "re-entry",
    "max_entries": "maximum entries",
    "exclusion_segment": "exclusion segment",
}


@dataclass(frozen=True)
class Change:
    kind: str  # added | removed | changed
    part: str  # step | trigger | entry | goal | setting
    path: str  # "steps.reminder", "trigger", "entry.reentry", "goal", "name"...
    summary: str
    before: Any = None
    after: Any = None
    fields: list[dict[str, Any]] = field(default_factory=list)  # a changed step: each field


def normalised(document: dict[str, Any]) -> dict[str, Any]:
    """The definition with its defaults, in its own order; as written when it does not parse."""
    try:
        dumped = JourneyDefinition.model_validate(document).model_dump(mode="json")
    except ValidationError:
        return document
    return dict(restore(dumped, capture(document)))


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """Every change from `before` to `after`, in the order of `after` (removals where the
    step was)."""
    old, new = normalised(before), normalised(after)
    changes: list[Change] = []
    for name in _SETTINGS:
        if old.get(name) != new.get(name):
            changes.append(_setting(name, old.get(name), new.get(name)))
    if old.get("trigger") != new.get("trigger"):
        changes.append(
            Change(
                "changed",
                "trigger",
                "trigger",
                f"trigger changed from {trigger_words(old.get('trigger'))} to "
                f"{trigger_words(new.get('trigger'))}",
                old.get("trigger"),
                new.get("trigger"),
            )
        )
    changes += _entry(_dict(old.get("entry")), _dict(new.get("entry")))
    changes += _goal(old.get("goal"), new.get("goal"))
    changes += _steps(_dict(old.get("steps")), _dict(new.get("steps")))
    return changes


def _setting(name: str, before: Any, after: Any) -> Change:
    if before is None:
        return Change("added", "setting", name, f"{name} set to {words(after)}", before, after)
    if after is None:
        return Change("removed", "setting", name, f"{name} removed (was {words(before)})", before)
    return Change(
        "changed", "setting", name, f"{name} changed from {words(before)} to {words(after)}",
        before, after,
    )  # fmt: skip


def _entry(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    changes = []
    for key in dict.fromkeys([*after, *before]):
        if before.get(key) != after.get(key):
            label = _ENTRY_WORDS.get(key, key)
            changes.append(
                Change(
                    "changed",
                    "entry",
                    f"entry.{key}",
                    f"entry rule {label} changed from {words(before.get(key))} to "
                    f"{words(after.get(key))}",
                    before.get(key),
                    after.get(key),
                )
            )
    return changes


def _goal(before: Any, after: Any) -> list[Change]:
    if before == after:
        return []
    if not before:
        return [Change("added", "goal", "goal", f"goal added: {goal_words(after)}", None, after)]
    if not after:
        return [
            Change(
                "removed",
                "goal",
                "goal",
                f"goal removed (was: {goal_words(before)}); goal counting restarts",
                before,
            )
        ]
    return [
        Change(
            "changed",
            "goal",
            "goal",
            f"goal changed from {goal_words(before)} to {goal_words(after)}",
            before,
            after,
        )
    ]


def _steps(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    changes = []
    for step_id in dict.fromkeys([*after, *before]):
        old, new = before.get(step_id), after.get(step_id)
        path = f"steps.{step_id}"
        if old is None:
            changes.append(
                Change(
                    "added", "step", path, f"step {step_id!r} added: {step_words(new)}", None, new
                )
            )
        elif new is None:
            changes.append(
                Change(
                    "removed",
                    "step",
                    path,
                    f"step {step_id!r} removed (was: {step_words(old)})",
                    old,
                )
            )
        elif old != new:
            if _dict(old).get("type") != _dict(new).get("type"):
                summary = f"step {step_id!r} changed from {step_words(old)} to {step_words(new)}"
                fields: list[dict[str, Any]] = []
            else:
                fields = _field_changes(_dict(old), _dict(new))
                phrases = [
                    f"{f['field']} {words(f['before'])} -> {words(f['after'])}" for f in fields
                ]
                summary = f"step {step_id!r} changed: " + "; ".join(phrases)
            changes.append(Change("changed", "step", path, summary, old, new, fields))
    return changes


def _field_changes(
    before: dict[str, Any], after: dict[str, Any], prefix: str = ""
) -> list[dict[str, Any]]:
    found = []
    for key in dict.fromkeys([*after, *before]):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        name = f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict) and old.get("type") == new.get("type"):
            found += _field_changes(old, new, f"{name}.")
        else:
            found.append({"field": name, "before": old, "after": new})
    return found


# --- words ---------------------------------------------------------------------------------------


def words(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return json.dumps(value, separators=(", ", ": "))


def trigger_words(trigger: Any) -> str:
    t = _dict(trigger)
    match t.get("type"):
        case "api":
            return "enrolment through the API"
        case "list_joined":
            new = " (new members only)" if t.get("only_new", True) else " (and its members)"
            return f"joining list {words(t.get('list'))}{new}"
        case "segment_entered":
            return f"entering segment {words(t.get('segment'))}"
        case "segment":
            mode = t.get("mode", "once")
            cron = f" on {words(t.get('cron'))}" if t.get("cron") else ""
            return f"segment {words(t.get('segment'))} ({mode}{cron})"
        case "event":
            where = f" where {words(t['where'])}" if t.get("where") else ""
            return f"event {words(t.get('name'))}{where}"
    return words(trigger)


def goal_words(goal: Any) -> str:
    g = _dict(goal)
    name = f"{words(g['name'])}: " if g.get("name") else ""
    return name + condition_words(g.get("criteria"))


def condition_words(condition: Any) -> str:
    c = _dict(condition)
    match c.get("type"):
        case "field":
            value = "" if c.get("op") in ("exists", "not_exists") else f" {words(c.get('value'))}"
            return f"field {c.get('field')} {c.get('op', 'eq')}{value}"
        case "tag":
            return f"has tag {words(c.get('tag'))}"
        case "in_list":
            return f"in list {words(c.get('list'))}"
        case "opened":
            return "opened " + (f"step {words(c['step'])}" if c.get("step") else "any message")
        case "clicked":
            link = f"link {words(c['link'])} in " if c.get("link") else ""
            return (
                "clicked " + link + (f"step {words(c['step'])}" if c.get("step") else "any message")
            )
        case "event":
            return f"event {words(c.get('name'))}"
        case "all" | "any":
            joiner = " and " if c["type"] == "all" else " or "
            return "(" + joiner.join(condition_words(x) for x in c.get("conditions", [])) + ")"
        case "not":
            return f"not {condition_words(c.get('condition'))}"
    return words(condition)


def step_words(step: Any) -> str:
    s = _dict(step)
    then = f", then {words(s['next'])}" if s.get("next") else ""
    match s.get("type"):
        case "send_email":
            return f"send email {words(s.get('template'))}{then}"
        case "send_sms":
            return f"send SMS {words(s.get('template'))}{then}"
        case "wait":
            if s.get("duration"):
                return f"wait {s['duration']}{then}"
            if s.get("until"):
                return f"wait until {s['until']}{then}"
            if s.get("until_field"):
                return f"wait until field {s['until_field']}{then}"
            return f"wait{then}"
        case "wait_for":
            event = _dict(s.get("event"))
            what = event.get("name") or f"{event.get('type')} of {event.get('step')}"
            return (
                f"wait up to {s.get('timeout')} for {what}: then {words(s.get('on_event'))}, "
                f"else {words(s.get('on_timeout'))}"
            )
        case "branch":
            rules = "; ".join(
                f"if {condition_words(_dict(r).get('condition'))} go to {words(_dict(r).get('next'))}"
                for r in s.get("rules", [])
            )
            return f"branch: {rules}; otherwise {words(s.get('default'))}"
        case "update_contact":
            parts = [
                f"{k} {words(s[k])}"
                for k in ("set", "unset", "add_tags", "remove_tags", "increment")
                if s.get(k)
            ]
            return f"update the contact ({', '.join(parts)}){then}"
        case "add_to_list":
            return f"add to list {words(s.get('list'))}{then}"
        case "remove_from_list":
            return f"remove from list {words(s.get('list'))}{then}"
        case "exit":
            return f"exit ({s.get('reason', 'exit_step')})"
    return words(step)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
