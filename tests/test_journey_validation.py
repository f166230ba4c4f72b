"""Unit tests of the journey definition format: schema, durations, graph rules, error paths.

Pure and synchronous: no database, no Temporal. Paths and messages are asserted exactly where
the format promises them (``steps.wait_click.on_timeout: unknown step "nuge"``), because the
editor and the API show them to people as they are.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from nurture.journeys.definition import JourneyDefinition, WaitForStep, WaitStep
from nurture.journeys.durations import format_duration, parse_duration
from nurture.journeys.validation import InvalidJourney, Problem, validate_journey

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples" / "journeys"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.json"))


def journey(steps: dict[str, Any], start: str = "a", **top: Any) -> dict[str, Any]:
    """A minimal definition around `steps`; extra top-level keys go in `top`."""
    return {"key": "test-journey", "name": "Test journey", "start": start, "steps": steps, **top}


def email(template: str = "t", **fields: Any) -> dict[str, Any]:
    return {"type": "send_email", "template": template, **fields}


def sms(template: str = "t", **fields: Any) -> dict[str, Any]:
    return {"type": "send_sms", "template": template, **fields}


def wait(duration: str = "1d", **fields: Any) -> dict[str, Any]:
    return {"type": "wait", "duration": duration, **fields}


def wait_for(event: dict[str, Any], timeout: str = "1d", **fields: Any) -> dict[str, Any]:
    return {"type": "wait_for", "event": event, "timeout": timeout, **fields}


def branch(condition: dict[str, Any], next: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"type": "branch", "rules": [{"condition": condition, "next": next}], **fields}


def problems(data: dict[str, Any]) -> list[Problem]:
    with pytest.raises(InvalidJourney) as caught:
        validate_journey(data)
    return caught.value.problems


def only_problem(data: dict[str, Any]) -> Problem:
    found = problems(data)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def as_text(found: list[Problem]) -> list[str]:
    return [str(p) for p in found]


# --- the seed examples ---------------------------------------------------------------------------


def test_the_four_seed_examples_and_the_quickstart_are_there() -> None:
    assert [p.stem for p in EXAMPLES] == [
        "benchmark-welcome",
        "dynamics-launch",
        "hubspot-nurture-goal",
        "quickstart",
        "register-coupon",
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_validates(path: Path) -> None:
    data = json.loads(path.read_text())
    definition = validate_journey(data)
    assert definition.key == path.stem
    assert definition.start in definition.steps


def test_examples_parse_into_the_expected_shapes() -> None:
    launch = validate_journey(json.loads((EXAMPLES_DIR / "dynamics-launch.json").read_text()))
    assert launch.trigger.type == "segment_entered"
    assert launch.time_zone == "Europe/Warsaw"
    clicked = launch.steps["clicked_product"]
    assert isinstance(clicked, WaitForStep)
    assert clicked.timeout == timedelta(days=1)
    assert clicked.on_timeout is None

    nurture = validate_journey(json.loads((EXAMPLES_DIR / "hubspot-nurture-goal.json").read_text()))
    assert nurture.trigger.type == "api"
    assert nurture.time_zone == "UTC"  # the default
    assert nurture.entry.reentry == "never"  # the default
    assert nurture.goal is not None and nurture.goal.criteria.type == "any"


def test_an_already_parsed_definition_is_still_graph_checked() -> None:
    parsed = JourneyDefinition.model_validate(journey({"a": email(next="nowhere")}))
    with pytest.raises(InvalidJourney) as caught:
        validate_journey(parsed)
    assert as_text(caught.value.problems) == ['steps.a.next: unknown step "nowhere"']


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1d", timedelta(days=1)),
        ("3h30m", timedelta(hours=3, minutes=30)),
        ("2w", timedelta(weeks=2)),
        ("45s", timedelta(seconds=45)),
        (" 1d 12h ", timedelta(days=1, hours=12)),
        ("P1D", timedelta(days=1)),
        ("PT90M", timedelta(minutes=90)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        ("-7d", timedelta(days=-7)),
        ("-P1D", timedelta(days=-1)),
        (90, timedelta(seconds=90)),
        (timedelta(hours=2), timedelta(hours=2)),
    ],
)
def test_durations_parse(text: Any, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1x", "invalid duration '1x'"),
        ("", "invalid duration ''"),
        ("1.5h", "invalid duration '1.5h'"),
        ("d", "invalid duration 'd'"),
        ("P", "invalid duration 'P'"),
        ("--7d", "invalid duration '--7d'"),
        (True, "not true/false"),
        (False, "not true/false"),
        (None, "got NoneType"),
        ([1], "got list"),
    ],
)
def test_bad_durations_are_refused(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "short"),
    [
        (timedelta(days=1), "1d"),
        (timedelta(days=1, hours=12), "1d12h"),
        (timedelta(hours=3, minutes=30), "3h30m"),
        (timedelta(weeks=2), "2w"),
        (timedelta(days=9), "1w2d"),
        (timedelta(days=-7), "-1w"),
        (timedelta(0), "0s"),
    ],
)
def test_durations_format_in_the_short_form(value: timedelta, short: str) -> None:
    assert format_duration(value) == short
    assert parse_duration(short) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1x", "invalid duration '1x'"),
        ("", "invalid duration ''"),
        (True, "not true/false"),
    ],
)
def test_a_bad_duration_in_a_step_is_reported_at_its_field(value: Any, message: str) -> None:
    problem = only_problem(journey({"a": {"type": "wait", "duration": value}}))
    assert problem.path == "steps.a.duration"
    assert message in problem.message


def test_a_bad_timeout_is_reported_at_the_timeout() -> None:
    steps = {"a": email(next="w"), "w": wait_for({"type": "open", "step": "a"}, timeout="soon")}
    problem = only_problem(journey(steps))
    assert problem.path == "steps.w.timeout"
    assert "invalid duration 'soon'" in problem.message


@pytest.mark.parametrize("timeout", ["0s", "-1d"])
def test_a_timeout_must_be_positive(timeout: str) -> None:
    steps = {"a": email(next="w"), "w": wait_for({"type": "open", "step": "a"}, timeout=timeout)}
    assert as_text(problems(journey(steps))) == ["steps.w.timeout: timeout must be positive"]


@pytest.mark.parametrize("duration", ["0s", "-7d"])
def test_a_wait_duration_must_be_positive(duration: str) -> None:
    assert as_text(problems(journey({"a": wait(duration)}))) == [
        "steps.a: duration must be positive"
    ]


def test_a_negative_offset_is_fine() -> None:
    definition = validate_journey(
        journey({"a": {"type": "wait", "until_field": "renewal_date", "offset": "-7d"}})
    )
    step = definition.steps["a"]
    assert isinstance(step, WaitStep)
    assert step.offset == timedelta(days=-7)


# --- graph rules ---------------------------------------------------------------------------------


def test_unknown_start() -> None:
    # Nothing is reachable from a start that does not exist, but that is not reported again.
    assert as_text(problems(journey({"a": email()}, start="nope"))) == [
        'start: unknown step "nope"'
    ]


def test_unknown_target_names_the_exact_path() -> None:
    steps = {
        "welcome": email(next="wait_click"),
        "wait_click": wait_for(
            {"type": "click", "step": "welcome"}, on_event="thanks", on_timeout="nuge"
        ),
        "thanks": email("thanks"),
    }
    assert as_text(problems(journey(steps, start="welcome"))) == [
        'steps.wait_click.on_timeout: unknown step "nuge"'
    ]


@pytest.mark.parametrize(
    ("step", "path"),
    [
        (email(next="ghost"), "steps.a.next"),
        (sms(next="ghost"), "steps.a.next"),
        (wait(next="ghost"), "steps.a.next"),
        ({"type": "add_to_list", "list": "l", "next": "ghost"}, "steps.a.next"),
        ({"type": "remove_from_list", "list": "l", "next": "ghost"}, "steps.a.next"),
        ({"type": "update_contact", "add_tags": ["x"], "next": "ghost"}, "steps.a.next"),
        (wait_for({"type": "custom", "name": "e"}, on_event="ghost"), "steps.a.on_event"),
        (branch({"type": "tag", "tag": "vip"}, next="ghost"), "steps.a.rules.0.next"),
        (branch({"type": "tag", "tag": "vip"}, default="ghost"), "steps.a.default"),
    ],
)
def test_unknown_target_of_every_exit(step: dict[str, Any], path: str) -> None:
    assert as_text(problems(journey({"a": step}))) == [f'{path}: unknown step "ghost"']


def test_unreachable_step() -> None:
    steps = {"a": email(), "orphan": email("other")}
    assert as_text(problems(journey(steps))) == [
        'steps.orphan: unreachable from the start step "a"'
    ]


def test_a_loop_without_a_wait_is_refused() -> None:
    steps = {
        "a": email(next="b"),
        "b": {"type": "update_contact", "increment": {"sends": 1}, "next": "a"},
    }
    assert as_text(problems(journey(steps))) == ["steps.a: loop with no wait in it: a -> b -> a"]


def test_a_branch_looping_to_itself_is_refused() -> None:
    steps = {"a": branch({"type": "tag", "tag": "vip"}, next="done", default="a"), "done": email()}
    assert as_text(problems(journey(steps))) == ["steps.a: loop with no wait in it: a -> a"]


def test_a_loop_through_a_wait_is_accepted() -> None:
    steps = {
        "a": email(next="pause"),
        "pause": wait("1w", next="check"),
        "check": branch({"type": "tag", "tag": "done"}, next=None, default="a"),
    }
    validate_journey(journey(steps))


def test_a_loop_through_a_wait_for_is_accepted() -> None:
    steps = {
        "a": email(next="w"),
        "w": wait_for({"type": "click", "step": "a"}, timeout="3d", on_timeout="a"),
    }
    validate_journey(journey(steps))


def test_only_the_instant_part_of_a_graph_is_a_loop() -> None:
    # A cycle through a wait, plus a separate instant cycle: only the latter is refused.
    steps = {
        "a": email(next="pause"),
        "pause": wait("1d", next="x"),
        "x": branch({"type": "tag", "tag": "vip"}, next="y", default="a"),
        "y": {"type": "add_to_list", "list": "vips", "next": "z"},
        "z": {"type": "remove_from_list", "list": "vips", "next": "y"},
    }
    assert as_text(problems(journey(steps))) == ["steps.y: loop with no wait in it: y -> z -> y"]


@pytest.mark.parametrize("kind", ["open", "click"])
def test_wait_for_engagement_of_an_unknown_step(kind: str) -> None:
    steps = {"a": email(next="w"), "w": wait_for({"type": kind, "step": "nope"})}
    assert as_text(problems(journey(steps))) == ['steps.w.event.step: unknown step "nope"']


@pytest.mark.parametrize("kind", ["open", "click"])
def test_wait_for_engagement_of_a_step_that_sends_nothing(kind: str) -> None:
    steps = {"a": email(next="p"), "p": wait(next="w"), "w": wait_for({"type": kind, "step": "p"})}
    assert as_text(problems(journey(steps))) == [
        'steps.w.event.step: step "p" (wait) sends nothing'
    ]


def test_wait_for_its_own_engagement_sends_nothing() -> None:
    steps = {"a": email(next="w"), "w": wait_for({"type": "click", "step": "w"})}
    assert as_text(problems(journey(steps))) == [
        'steps.w.event.step: step "w" (wait_for) sends nothing'
    ]


def test_wait_for_an_open_of_an_sms_is_refused() -> None:
    steps = {"a": sms(next="w"), "w": wait_for({"type": "open", "step": "a"})}
    assert as_text(problems(journey(steps))) == [
        'steps.w.event.step: step "a" sends an SMS, and SMS opens are not tracked'
    ]


def test_wait_for_a_click_of_an_sms_is_accepted() -> None:
    steps = {"a": sms(next="w"), "w": wait_for({"type": "click", "step": "a"})}
    validate_journey(journey(steps))


def test_wait_for_a_send_step_that_never_runs_before_it() -> None:
    steps = {
        "w": wait_for({"type": "open", "step": "late"}, on_event="late", on_timeout="late"),
        "late": email(),
    }
    assert as_text(problems(journey(steps, start="w"))) == [
        'steps.w.event.step: step "late" never runs before "w"'
    ]


def test_wait_for_a_send_step_on_another_path_never_runs_before_it() -> None:
    steps = {
        "a": branch({"type": "tag", "tag": "vip"}, next="vip_mail", default="w"),
        "vip_mail": email("vip"),
        "w": wait_for({"type": "click", "step": "vip_mail"}),
    }
    assert as_text(problems(journey(steps))) == [
        'steps.w.event.step: step "vip_mail" never runs before "w"'
    ]


def test_wait_for_a_send_step_that_runs_before_a_later_visit_is_accepted() -> None:
    # The first visit of "w" precedes "s", but "s" loops back to "w", so a message can exist.
    steps = {
        "w": wait_for({"type": "open", "step": "s"}, on_timeout="s", on_event=None),
        "s": email(next="w"),
    }
    validate_journey(journey(steps, start="w"))


def test_branch_condition_referencing_a_step_that_sends_nothing() -> None:
    steps = {
        "a": email(next="p"),
        "p": wait(next="b"),
        "b": branch({"type": "opened", "step": "p"}, next=None),
    }
    assert as_text(problems(journey(steps))) == [
        'steps.b.rules.0.condition.step: step "p" (wait) sends nothing'
    ]


def test_nested_branch_conditions_are_checked_with_their_paths() -> None:
    condition = {
        "type": "all",
        "conditions": [
            {"type": "tag", "tag": "vip"},
            {"type": "not", "condition": {"type": "clicked", "step": "ghost"}},
        ],
    }
    steps = {"a": email(next="b"), "b": branch(condition)}
    assert as_text(problems(journey(steps))) == [
        'steps.b.rules.0.condition.conditions.1.condition.step: unknown step "ghost"'
    ]


def test_branch_opened_condition_on_an_sms_is_refused() -> None:
    steps = {"a": sms(next="b"), "b": branch({"type": "opened", "step": "a"})}
    assert as_text(problems(journey(steps))) == [
        'steps.b.rules.0.condition.step: step "a" sends an SMS, and SMS opens are not tracked'
    ]


def test_branch_clicked_condition_on_an_sms_and_any_message_are_accepted() -> None:
    steps = {
        "a": sms(next="b"),
        "b": branch({"type": "clicked", "step": "a", "link": "offer"}, next="c"),
        "c": branch({"type": "opened"}, next=None),
    }
    validate_journey(journey(steps))


def test_goal_condition_referencing_steps_that_send_nothing() -> None:
    goal = {
        "name": "engaged",
        "criteria": {
            "type": "any",
            "conditions": [
                {"type": "event", "name": "purchase"},
                {"type": "clicked", "step": "p"},
                {"type": "opened", "step": "ghost"},
            ],
        },
    }
    steps = {"a": email(next="p"), "p": wait()}
    assert as_text(problems(journey(steps, goal=goal))) == [
        'goal.criteria.conditions.1.step: step "p" (wait) sends nothing',
        'goal.criteria.conditions.2.step: unknown step "ghost"',
    ]


def test_goal_condition_at_the_top() -> None:
    goal = {"criteria": {"type": "opened", "step": "p"}}
    steps = {"a": email(next="p"), "p": wait()}
    assert as_text(problems(journey(steps, goal=goal))) == [
        'goal.criteria.step: step "p" (wait) sends nothing'
    ]


# --- schema errors -------------------------------------------------------------------------------


def test_unknown_step_type() -> None:
    problem = only_problem(journey({"a": {"type": "send_emial", "template": "t"}}))
    assert problem.path == "steps.a"
    assert "unknown type 'send_emial'" in problem.message
    assert "'send_email'" in problem.message and "'wait_for'" in problem.message


def test_step_without_a_type() -> None:
    problem = only_problem(journey({"a": {"template": "t"}}))
    assert problem.path == "steps.a"
    assert "discriminator 'type'" in problem.message


def test_unknown_trigger_type() -> None:
    problem = only_problem(journey({"a": email()}, trigger={"type": "webhook"}))
    assert problem.path == "trigger"
    assert "unknown type 'webhook'" in problem.message
    assert "'list_joined'" in problem.message


def test_unknown_condition_type() -> None:
    steps = {"a": email(next="b"), "b": branch({"type": "score", "min": 10})}
    problem = only_problem(journey(steps))
    assert problem.path == "steps.b.rules.0.condition"
    assert "unknown type 'score'" in problem.message


def test_a_typo_key_is_refused() -> None:
    steps = {"a": {"type": "send_email", "template": "t", "nxet": "b"}, "b": email()}
    found = problems(journey(steps))
    assert [(p.path, p.message) for p in found] == [
        ("steps.a.nxet", "Extra inputs are not permitted")
    ]


def test_a_typo_top_level_key_is_refused() -> None:
    data = {"key": "k", "name": "n", "start": "a", "stpes": {"a": email()}}
    assert sorted(as_text(problems(data))) == [
        "steps: Field required",
        "stpes: Extra inputs are not permitted",
    ]


def test_a_typo_key_inside_a_condition_and_an_event_is_refused() -> None:
    steps = {
        "a": email(next="w"),
        "w": wait_for({"type": "click", "step": "a", "lnk": "x"}, on_event="b"),
        "b": branch({"type": "tag", "tag": "vip", "vlaue": 1}),
    }
    assert sorted(as_text(problems(journey(steps)))) == [
        "steps.b.rules.0.condition.vlaue: Extra inputs are not permitted",
        "steps.w.event.lnk: Extra inputs are not permitted",
    ]


def test_bad_time_zone_on_the_journey() -> None:
    problem = only_problem(journey({"a": email()}, time_zone="Mars/Olympus"))
    assert problem.path == "time_zone"
    assert "unknown time zone 'Mars/Olympus'" in problem.message
    assert "IANA" in problem.message


def test_bad_time_zone_on_a_wait_step() -> None:
    problem = only_problem(journey({"a": wait(time_zone="Europe/Varsovia")}))
    assert problem.path == "steps.a.time_zone"
    assert "unknown time zone 'Europe/Varsovia'" in problem.message


def test_good_time_zones_are_accepted() -> None:
    definition = validate_journey(
        journey({"a": wait(time_zone="America/New_York")}, time_zone="Europe/Warsaw")
    )
    assert definition.time_zone == "Europe/Warsaw"


def test_a_wait_with_no_target() -> None:
    assert as_text(problems(journey({"a": {"type": "wait"}}))) == [
        "steps.a: a wait needs exactly one of duration, until, until_field"
    ]


@pytest.mark.parametrize(
    ("fields", "got"),
    [
        ({"duration": "1d", "until": "2027-01-01T09:00:00"}, "duration, until"),
        ({"until": "2027-01-01T09:00:00", "until_field": "birthday"}, "until, until_field"),
        ({"duration": "1d", "until_field": "birthday"}, "duration, until_field"),
    ],
)
def test_a_wait_with_two_targets(fields: dict[str, Any], got: str) -> None:
    assert as_text(problems(journey({"a": {"type": "wait", **fields}}))) == [
        f"steps.a: a wait needs exactly one of duration, until, until_field (got {got})"
    ]


@pytest.mark.parametrize(
    "extra",
    [
        {"duration": "1d", "offset": "-1d"},
        {"duration": "1d", "at": "00:00"},  # midnight is a time too, not "no time"
        {"until": "2027-01-01T09:00:00", "yearly": True},
    ],
)
def test_offset_at_and_yearly_need_until_field(extra: dict[str, Any]) -> None:
    assert as_text(problems(journey({"a": {"type": "wait", **extra}}))) == [
        "steps.a: offset, at and yearly apply only to until_field"
    ]


def test_until_field_with_offset_at_and_yearly() -> None:
    step = {
        "type": "wait",
        "until_field": "birthday",
        "offset": "-1d",
        "at": "09:30",
        "yearly": True,
    }
    definition = validate_journey(journey({"a": step}))
    parsed = definition.steps["a"]
    assert isinstance(parsed, WaitStep)
    assert parsed.offset == timedelta(days=-1)
    assert parsed.at is not None and parsed.at.isoformat() == "09:30:00"


def test_update_contact_with_nothing_to_do() -> None:
    problem = only_problem(journey({"a": {"type": "update_contact", "set": {}}}))
    assert problem.path == "steps.a"
    assert "update_contact needs at least one of" in problem.message
    assert "increment" in problem.message


@pytest.mark.parametrize(
    "fields",
    [
        {"set": {"score": 1}, "unset": ["score"]},
        {"set": {"score": 1}, "increment": {"score": 1}},
    ],
)
def test_update_contact_changing_a_field_twice(fields: dict[str, Any]) -> None:
    assert as_text(problems(journey({"a": {"type": "update_contact", **fields}}))) == [
        "steps.a: fields changed twice in one step: score"
    ]


@pytest.mark.parametrize("op", ["in", "not_in"])
def test_field_condition_in_needs_a_list(op: str) -> None:
    condition = {"type": "field", "field": "country", "op": op, "value": "PL"}
    steps = {"a": email(next="b"), "b": branch(condition)}
    assert as_text(problems(journey(steps))) == [
        f"steps.b.rules.0.condition: operator '{op}' needs a list as value"
    ]


def test_field_condition_needs_a_value_except_for_exists() -> None:
    goal = {"criteria": {"type": "field", "field": "lifecycle_stage", "op": "eq"}}
    assert as_text(problems(journey({"a": email()}, goal=goal))) == [
        "goal.criteria: operator 'eq' needs a value"
    ]
    for op in ("exists", "not_exists"):
        goal = {"criteria": {"type": "field", "field": "phone", "op": op}}
        validate_journey(journey({"a": email()}, goal=goal))


def test_field_condition_with_an_unknown_operator() -> None:
    goal = {"criteria": {"type": "field", "field": "x", "op": "like", "value": "a"}}
    problem = only_problem(journey({"a": email()}, goal=goal))
    assert problem.path == "goal.criteria.op"
    assert "'eq'" in problem.message and "'not_exists'" in problem.message


def test_missing_required_top_level_keys() -> None:
    assert sorted(as_text(problems({}))) == [
        "key: Field required",
        "name: Field required",
        "start: Field required",
        "steps: Field required",
    ]


def test_bad_key_step_id_and_empty_steps() -> None:
    found = problems({"key": "Not A Key", "name": "n", "start": "a", "steps": {}})
    assert [p.path for p in found] == ["key", "steps"]
    assert "should match pattern" in found[0].message
    assert "at least 1 item" in found[1].message

    bad_id = only_problem(journey({"a b": email()}, start="a"))
    assert bad_id.path == "steps.a b"
    assert "should match pattern" in bad_id.message


def test_entry_rules_are_checked() -> None:
    found = problems(journey({"a": email()}, entry={"reentry": "sometimes", "max_entries": 0}))
    assert [p.path for p in found] == ["entry.reentry", "entry.max_entries"]
    assert "'after_exit'" in found[0].message
    assert "greater than or equal to 1" in found[1].message


# --- the union tag stays out of paths -----------------------------------------------------------


def test_missing_template_is_reported_without_the_union_tag() -> None:
    problem = only_problem(journey({"a": {"type": "send_email"}}))
    assert problem.path == "steps.a.template"
    assert problem.message == "Field required"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (journey({"a": {"type": "send_sms", "template": ""}}), "steps.a.template"),
        (journey({"a": {"type": "add_to_list", "list": "Bad List"}}), "steps.a.list"),
        (journey({"a": {"type": "exit", "reason": ""}}), "steps.a.reason"),
        (
            journey({"a": email(next="w"), "w": wait_for({"type": "click"})}),
            "steps.w.event.step",
        ),
        (
            journey(
                {"a": email(next="w"), "w": wait_for({"type": "custom", "name": "x", "where": 1})}
            ),
            "steps.w.event.where",
        ),
        (
            journey({"a": email()}, trigger={"type": "list_joined", "list": "Bad List"}),
            "trigger.list",
        ),
        (
            journey({"a": email()}, trigger={"type": "segment_entered"}),
            "trigger.segment",
        ),
        (
            journey({"a": email()}, goal={"criteria": {"type": "tag", "tag": ""}}),
            "goal.criteria.tag",
        ),
        (
            journey({"a": email()}, goal={"criteria": {"type": "in_list", "list": "X"}}),
            "goal.criteria.list",
        ),
        (
            journey(
                {"a": email()},
                goal={"criteria": {"type": "not", "condition": {"type": "tag", "tag": ""}}},
            ),
            "goal.criteria.condition.tag",
        ),
        (
            journey(
                {"a": email()},
                goal={
                    "criteria": {
                        "type": "all",
                        "conditions": [{"type": "clicked", "min_count": 0}],
                    }
                },
            ),
            "goal.criteria.conditions.0.min_count",
        ),
        (
            journey({"a": branch({"type": "any", "conditions": [{"type": "tag"}]})}),
            "steps.a.rules.0.condition.conditions.0.tag",
        ),
    ],
)
def test_paths_never_contain_the_union_tag(data: dict[str, Any], path: str) -> None:
    assert only_problem(data).path == path


# The "event" tag (of EventTrigger and EventCondition) is also the name of a union-holding field
# (WaitForStep.event): the field after the tag must still be named.
def test_event_trigger_error_keeps_the_field_name() -> None:
    problem = only_problem(journey({"a": email()}, trigger={"type": "event", "name": ""}))
    assert problem.path == "trigger.name"


@pytest.mark.parametrize(
    ("criteria", "path"),
    [
        ({"type": "event", "name": ""}, "goal.criteria.name"),
        (
            {"type": "any", "conditions": [{"type": "event", "name": "x", "min_count": 0}]},
            "goal.criteria.conditions.0.min_count",
        ),
    ],
)
def test_event_condition_error_keeps_the_field_name(criteria: dict[str, Any], path: str) -> None:
    problem = only_problem(journey({"a": email()}, goal={"criteria": criteria}))
    assert problem.path == path


# --- every problem at once -----------------------------------------------------------------------


def test_every_graph_problem_is_listed_at_once() -> None:
    steps = {
        "a": email(next="b"),
        "b": branch({"type": "tag", "tag": "vip"}, next="gone", default="a"),
        "orphan": email("orphan"),
    }
    found = problems(journey(steps))
    assert as_text(found) == [
        'steps.b.rules.0.next: unknown step "gone"',
        'steps.orphan: unreachable from the start step "a"',
        "steps.a: loop with no wait in it: a -> b -> a",
    ]


def test_every_schema_problem_is_listed_at_once() -> None:
    steps = {
        "a": {"type": "send_email", "next": "w"},  # no template
        "w": {"type": "wait", "duration": "1d", "nxet": "a"},  # typo
    }
    found = problems(journey(steps, time_zone="Nowhere/Town"))
    assert len(found) == 3
    assert sorted(p.path for p in found) == ["steps.a.template", "steps.w.nxet", "time_zone"]


def test_the_error_text_lists_every_problem_as_path_colon_message() -> None:
    steps = {"a": email(next="x"), "b": email()}
    with pytest.raises(InvalidJourney) as caught:
        validate_journey(journey(steps))
    assert str(caught.value) == (
        "invalid journey:\n"
        '  steps.a.next: unknown step "x"\n'
        '  steps.b: unreachable from the start step "a"'
    )
    assert isinstance(caught.value, ValueError)


def test_a_problem_without_a_path_is_just_its_message() -> None:
    assert str(Problem("", "not an object")) == "not an object"
    assert str(Problem("start", "x")) == "start: x"


# --- round trip ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_round_trip_through_json(path: Path) -> None:
    definition = validate_journey(json.loads(path.read_text()))
    dumped = definition.model_dump(mode="json")
    again = validate_journey(json.loads(json.dumps(dumped)))
    assert again == definition
    assert again.model_dump(mode="json") == dumped


def test_durations_serialize_in_the_short_form() -> None:
    steps = {
        "a": email(next="p"),
        "p": wait("P1D", next="w"),
        "w": wait_for({"type": "open", "step": "a"}, timeout="PT36H", on_timeout="r"),
        "r": {"type": "wait", "until_field": "renewal_date", "offset": "-7d", "at": "09:00"},
    }
    definition = validate_journey(journey(steps))
    dumped = definition.model_dump(mode="json")
    assert dumped["steps"]["p"]["duration"] == "1d"
    assert dumped["steps"]["w"]["timeout"] == "1d12h"
    assert dumped["steps"]["r"]["offset"] == "-1w"
    assert dumped["steps"]["r"]["at"] == "09:00:00"
    assert validate_journey(dumped) == definition


def test_dumped_examples_keep_their_durations_and_dates() -> None:
    data = json.loads((EXAMPLES_DIR / "dynamics-launch.json").read_text())
    dumped = validate_journey(data).model_dump(mode="json")
    assert dumped["steps"]["clicked_product"]["timeout"] == "1d"
    assert dumped["steps"]["until_launch"]["until"] == "2027-03-01T09:00:00"
    assert dumped["trigger"] == {"type": "segment_entered", "segment": "top-customers"}


# --- inputs that once crashed validation or could not round-trip -----------------------------------------


@pytest.mark.parametrize("duration", ["99999999999d", 10**20])
def test_a_huge_duration_is_a_problem_not_a_crash(duration: Any) -> None:
    problem = only_problem(journey({"a": {"type": "wait", "duration": duration}}))
    assert problem.path == "steps.a.duration"


@pytest.mark.parametrize("where", ["journey", "wait step"])
def test_a_time_zone_directory_is_a_problem_not_a_crash(where: str) -> None:
    if where == "journey":
        data = journey({"a": email()}, time_zone="Europe")
        path = "time_zone"
    else:
        data = journey({"a": wait(time_zone="America")})
        path = "steps.a.time_zone"
    problem = only_problem(data)
    assert problem.path == path


def test_a_sub_second_duration_is_refused() -> None:
    # Stored definitions use the whole-second short form, so a fraction could not round-trip.
    problem = only_problem(journey({"a": wait("PT0.5S")}))
    assert problem.path == "steps.a.duration"
    assert "whole number of seconds" in problem.message
