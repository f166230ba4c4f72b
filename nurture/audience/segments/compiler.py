"""Compile a segment filter to one SQL boolean expression over `contacts`.

The expression goes into a WHERE clause, so counting, previewing, paging through members and
re-checking one contact are all the same query with a different head. Lists, events,
enrollments and suppressions become correlated EXISTS (or COUNT) subqueries, which Postgres
turns into semi-joins on their `contact_id` indexes; tags use `@>` / `&&` so the GIN index on
`contacts.tags` answers them.

Every value reaches the database as a bound parameter; the only SQL text written here is
operators and function names.

Custom fields live in JSONB and were written by hand, by CRMs and by CSV imports (where every
value is a string), so a comparison decides by the literal it is given: a number compares
numerically, both with JSON numbers and with strings that look like numbers ("42"); a date
compares as a timestamp, with strings that look like ISO dates. Anything that does not look
like a number or a date simply does not match; it never makes the whole query fail.

`met_goal` judges a journey's goal, which is a journey condition (JSON in the live version),
when the query runs rather than when it is compiled: compiling needs no database, and a
watched segment's filter stays right when the journey is published again (`_goal_met_now`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, JSONPATH
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from nurture.audience.segments.definition import (
    AllFilter,
    AnyFilter,
    ClickedFilter,
    ConsentFilter,
    EnrolledFilter,
    EventFilter,
    FieldFilter,
    Filter,
    ListFilter,
    MetGoalFilter,
    NotFilter,
    OpenedFilter,
    SuppressedFilter,
    TagFilter,
)
from nurture.db.models import (
    ACTIVE_ENROLLMENT_STATUSES,
    Contact,
    ContactList,
    Enrollment,
    Event,
    Journey,
    JourneyVersion,
    ListMembership,
    Message,
    Suppression,
)
from nurture.errors import Invalid
from nurture.journeys.conversion import (
    counted_enrollment,
    ended_otherwise,
    live_definition,
    met_goal_while_enrolled,
)

FieldType = Literal["string", "number", "boolean", "date"]

TEXT_FIELDS = ("email", "phone", "external_id", "time_zone")
TIME_FIELDS = ("created_at", "updated_at")
CUSTOM_PREFIX = "fields."

# A JSON string that Postgres can cast to numeric without error (no NaN/Infinity, bounded
# exponent so that a value such as "1e999999" cannot overflow the cast).
NUMBER_PATTERN = r"^\s*-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]{1,3})?\s*$"
# Cheap pre-check before the safe timestamp cast, so most non-dates never reach it.
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[-+][0-9]{2}(:?[0-9]{2})?)?)?$"
# Created by migration 0005: a timestamptz, or NULL when the text is not a real date
# ("2024-02-30"), read in UTC when it has no offset.
SAFE_TIMESTAMP = "nurture_timestamp_or_null"

_ORDERING = {"gt": "__gt__", "gte": "__ge__", "lt": "__lt__", "lte": "__le__"}


@dataclass
class _Problems:
    found: list[dict[str, str]] = field(default_factory=list)

    def add(self, path: str, message: str) -> ColumnElement[bool]:
        self.found.append({"path": path, "message": message})
        return sa.false()  # a placeholder; nothing is compiled once there is a problem


def compile_filter(
    filter: Filter, *, field_types: Mapping[str, FieldType] | None = None, path: str = "filter"
) -> ColumnElement[bool]:
    """The filter as a boolean over `contacts`; `Invalid` lists every problem with its path.

    `field_types` optionally says what type a custom field holds (name without "fields."); a
    comparison with a literal of another type is then refused. A field it does not list
    accepts any literal."""
    problems = _Problems()
    expression = _Compiler(problems, dict(field_types or {})).filter(filter, path)
    if problems.found:
        raise Invalid("the segment filter is invalid", detail=problems.found)
    return expression


@dataclass(frozen=True)
class Reference:
    """A key the filter names (a list, a journey, a template) and where, to check it exists."""

    kind: Literal["list", "journey", "template"]
    key: str
    path: str


def references(filter: Filter, path: str = "filter") -> Iterator[Reference]:
    match filter:
        case ListFilter():
            yield Reference("list", filter.list, f"{path}.list")
        case EnrolledFilter() | MetGoalFilter():
            yield Reference("journey", filter.journey, f"{path}.journey")
        case OpenedFilter() | ClickedFilter():
            if filter.journey is not None:
                yield Reference("journey", filter.journey, f"{path}.journey")
            if filter.template is not None:
                yield Reference("template", filter.template, f"{path}.template")
        case AllFilter() | AnyFilter():
            for i, condition in enumerate(filter.conditions):
                yield from references(condition, f"{path}.conditions.{i}")
        case NotFilter():
            yield from references(filter.condition, f"{path}.condition")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_time(value: Any) -> datetime | None:
    """An ISO 8601 date or date-time literal, read in UTC when it has no offset."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _days_ago(days: int) -> ColumnElement[datetime]:
    return sa.func.now() - sa.literal(timedelta(days=days), sa.Interval())


def _days_ahead(days: int) -> ColumnElement[datetime]:
    return sa.func.now() + sa.literal(timedelta(days=days), sa.Interval())


def _text(value: str) -> ColumnElement[str]:
    # Lower-cased here rather than with lower() in SQL: one less function call per row.
    return sa.literal(value.casefold(), sa.Text())


def _missing_or_not(expression: ColumnElement[bool]) -> ColumnElement[bool]:
    """`ne`: true when the field is missing, as in journey conditions."""
    return sa.not_(sa.func.coalesce(expression, sa.false()))


class _Compiler:
    def __init__(self, problems: _Problems, field_types: dict[str, FieldType]) -> None:
        self.problems = problems
        self.field_types = field_types

    def filter(self, f: Filter, path: str) -> ColumnElement[bool]:
        match f:
            case AllFilter():
                return sa.and_(
                    *(self.filter(c, f"{path}.conditions.{i}") for i, c in enumerate(f.conditions))
                )
            case AnyFilter():
                return sa.or_(
                    *(self.filter(c, f"{path}.conditions.{i}") for i, c in enumerate(f.conditions))
                )
            case NotFilter():
                # NOT over a possibly-NULL comparison would drop the contact; coalesce first.
                return sa.not_(
                    sa.func.coalesce(self.filter(f.condition, f"{path}.condition"), sa.false())
                )
            case FieldFilter():
                return self.field(f, path)
            case TagFilter():
                return self.tag(f)
            case ListFilter():
                return self.in_list(f)
            case ConsentFilter():
                return self.consent(f)
            case SuppressedFilter():
                return self.suppressed(f)
            case EventFilter():
                return self.event(f)
            case OpenedFilter() | ClickedFilter():
                return self.engagement(f)
            case EnrolledFilter():
                return self.enrolled(f)
            case MetGoalFilter():
                return self.met_goal(f)
        raise TypeError(f"unknown filter {f!r}")  # pragma: no cover

    # --- fields ---------------------------------------------------------------------------

    def field(self, f: FieldFilter, path: str) -> ColumnElement[bool]:
        if f.field.startswith(CUSTOM_PREFIX):
            name = f.field.removeprefix(CUSTOM_PREFIX)
            if not name:
                return self.problems.add(f"{path}.field", "name the custom field: fields.<name>")
            return self.custom_field(f, name, path)
        if f.field in TEXT_FIELDS:
            return self.text_field(f, getattr(Contact, f.field), path)
        if f.field in TIME_FIELDS:
            return self.time_field(f, getattr(Contact, f.field), path)
        known = ", ".join((*TEXT_FIELDS, *TIME_FIELDS))
        return self.problems.add(
            f"{path}.field", f"unknown field {f.field!r}: use one of {known}, or fields.<name>"
        )

    def text_field(self, f: FieldFilter, column: Any, path: str) -> ColumnElement[bool]:
        column = col(column)
        value, where = f.value, f"{path}.value"
        lowered = sa.func.lower(column)
        match f.op:
            case "exists":
                return sa.func.coalesce(column, "") != ""
            case "not_exists":
                return sa.func.coalesce(column, "") == ""
            case "eq" | "ne" | "contains" | "starts_with":
                if not isinstance(value, str):
                    return self.problems.add(where, f"expected a string for {f.op}")
                if f.op == "contains":
                    return sa.func.strpos(lowered, _text(value)) > 0
                if f.op == "starts_with":
                    return sa.func.starts_with(lowered, _text(value))
                equal = lowered == _text(value)
                return equal if f.op == "eq" else _missing_or_not(equal)
            case "in":
                if not (
                    isinstance(value, list) and value and all(isinstance(v, str) for v in value)
                ):
                    return self.problems.add(where, "expected a non-empty list of strings for in")
                return lowered.in_([str(v).casefold() for v in value])
        return self.problems.add(
            f"{path}.op", f"operator {f.op!r} does not apply to {f.field} (text)"
        )

    def time_field(self, f: FieldFilter, column: Any, path: str) -> ColumnElement[bool]:
        compared = self.time_comparison(f, sa.type_coerce(column, sa.DateTime(timezone=True)), path)
        if compared is None:
            return self.problems.add(
                f"{path}.op", f"operator {f.op!r} does not apply to {f.field} (a date-time)"
            )
        return compared

    def time_comparison(
        self, f: FieldFilter, when: ColumnElement[Any], path: str
    ) -> ColumnElement[bool] | None:
        """Date operators on a timestamp expression; None if `op` is not a date operator."""
        value, where = f.value, f"{path}.value"
        match f.op:
            case "exists":
                return when.is_not(None)
            case "not_exists":
                return when.is_(None)
            case "within_last_days" | "within_next_days":
                if not (_is_number(value) and isinstance(value, int) and value >= 1):
                    return self.problems.add(where, f"expected a whole number of days for {f.op}")
                if f.op == "within_last_days":
                    return sa.and_(when >= _days_ago(value), when <= sa.func.now())
                return sa.and_(when >= sa.func.now(), when <= _days_ahead(value))
            case "before" | "after" | "gt" | "gte" | "lt" | "lte":
                moment = _as_time(value)
                if moment is None:
                    return self.problems.add(
                        where, f"expected a date (ISO 8601, e.g. 2026-01-31) for {f.op}"
                    )
                bound = sa.literal(moment, sa.DateTime(timezone=True))
                operator = {"before": "lt", "after": "gt"}.get(f.op, f.op)
                result: ColumnElement[bool] = getattr(when, _ORDERING[operator])(bound)
                return result
        return None

    def custom_field(self, f: FieldFilter, name: str, path: str) -> ColumnElement[bool]:
        value, where = f.value, f"{path}.value"
        declared = self.field_types.get(name)
        fields = col(Contact.fields)
        key = sa.literal(name, sa.Text())
        raw = fields.op("->", return_type=JSONB)(key)
        text = fields.op("->>", return_type=sa.Text())(key)
        kind = sa.func.jsonb_typeof(raw)
        number = sa.case(
            (kind == "number", sa.cast(text, sa.Numeric())),
            (
                sa.and_(kind == "string", text.op("~")(sa.literal(NUMBER_PATTERN))),
                sa.cast(text, sa.Numeric()),
            ),
        )
        when = sa.case(
            (
                sa.and_(kind == "string", text.op("~")(sa.literal(DATE_PATTERN))),
                getattr(sa.func, SAFE_TIMESTAMP)(text, type_=sa.DateTime(timezone=True)),
            ),
        )
        lowered = sa.func.lower(text)

        def typed(literal_type: FieldType) -> bool:
            """Is a literal of this type allowed for the field? Records a problem if not."""
            if declared is not None and declared != literal_type:
                self.problems.add(
                    where, f"expected a {declared} for {f.op}: {f.field} holds {declared}s"
                )
                return False
            return True

        def equal(literal: Any) -> ColumnElement[bool] | None:
            if isinstance(literal, bool):
                # JSON true and the string "true" (as a CSV import stores it) alike.
                return lowered == ("true" if literal else "false") if typed("boolean") else None
            if _is_number(literal):
                return number == sa.literal(literal, sa.Numeric()) if typed("number") else None
            if isinstance(literal, str):
                if declared == "date" and _as_time(literal) is not None:
                    return when == sa.literal(_as_time(literal), sa.DateTime(timezone=True))
                return lowered == _text(literal) if typed("string") else None
            if isinstance(literal, dict | list):
                return raw == sa.literal(literal, JSONB)
            return None

        match f.op:
            case "exists":
                return sa.func.coalesce(text, "") != ""
            case "not_exists":
                return sa.func.coalesce(text, "") == ""
            case "eq" | "ne":
                before = len(self.problems.found)
                compared = equal(value)
                if compared is None and len(self.problems.found) > before:
                    return sa.false()  # refused by the field type, already reported
                if compared is None:
                    return self.problems.add(
                        where, f"expected a string, number or boolean for {f.op}"
                    )
                return compared if f.op == "eq" else _missing_or_not(compared)
            case "in":
                if not (isinstance(value, list) and value):
                    return self.problems.add(where, "expected a non-empty list for in")
                strings = [v.casefold() for v in value if isinstance(v, str)]
                numbers = [v for v in value if _is_number(v)]
                if len(strings) + len(numbers) != len(value):
                    return self.problems.add(where, "expected a list of strings and numbers for in")
                if (strings and not typed("string")) or (numbers and not typed("number")):
                    return sa.false()
                parts: list[ColumnElement[bool]] = []
                if strings:
                    parts.append(lowered.in_(strings))
                if numbers:
                    parts.append(number.in_([sa.literal(n, sa.Numeric()) for n in numbers]))
                return sa.or_(*parts)
            case "gt" | "gte" | "lt" | "lte":
                if _is_number(value):
                    if not typed("number"):
                        return sa.false()
                    bound = sa.literal(value, sa.Numeric())
                    result: ColumnElement[bool] = getattr(number, _ORDERING[f.op])(bound)
                    return result
                if _as_time(value) is not None:
                    return self._dated(f, when, path) if typed("date") else sa.false()
                return self.problems.add(
                    where, f"expected a number for {f.op} (or an ISO date, to compare dates)"
                )
            case "before" | "after" | "within_last_days" | "within_next_days":
                if declared is not None and declared != "date":
                    return self.problems.add(
                        f"{path}.op", f"operator {f.op!r} needs a date: {f.field} holds {declared}s"
                    )
                return self._dated(f, when, path)
            case "contains":
                if isinstance(value, str):
                    element = sa.func.jsonb_array_elements_text(raw).table_valued("value")
                    in_array = sa.exists(
                        sa.select(1)
                        .select_from(element)
                        .where(sa.func.lower(element.c.value) == _text(value))
                    )
                    return sa.or_(
                        sa.and_(kind == "string", sa.func.strpos(lowered, _text(value)) > 0),
                        sa.and_(kind == "array", in_array),
                    )
                if _is_number(value) or isinstance(value, bool):
                    return sa.and_(
                        kind == "array",
                        raw.op("@>", return_type=sa.Boolean())(sa.literal([value], JSONB)),
                    )
                return self.problems.add(where, "expected a string or a number for contains")
            case "starts_with":
                if not isinstance(value, str):
                    return self.problems.add(where, "expected a string for starts_with")
                if not typed("string"):
                    return sa.false()
                return sa.and_(kind == "string", sa.func.starts_with(lowered, _text(value)))
        raise AssertionError(f"unhandled operator {f.op}")  # pragma: no cover

    def _dated(self, f: FieldFilter, when: ColumnElement[Any], path: str) -> ColumnElement[bool]:
        compared = self.time_comparison(f, when, path)
        return sa.false() if compared is None else compared

    # --- tags, lists, consent, suppressions -------------------------------------------------

    def tag(self, f: TagFilter) -> ColumnElement[bool]:
        tags = col(Contact.tags)
        wanted = sa.literal(f.wanted, ARRAY(sa.Text()))
        operator = "@>" if f.match == "all" or len(f.wanted) == 1 else "&&"
        found = tags.op(operator, return_type=sa.Boolean())(wanted)
        return found if f.op == "has" else sa.not_(found)

    def in_list(self, f: ListFilter) -> ColumnElement[bool]:
        return _in_list(f.list)

    def consent(self, f: ConsentFilter) -> ColumnElement[bool]:
        choice = col(Contact.consent).op("->>", return_type=sa.Text())(
            sa.literal(f.channel, sa.Text())
        )
        return choice.is_(None) if f.status == "none" else choice == f.status

    def suppressed(self, f: SuppressedFilter) -> ColumnElement[bool]:
        query = sa.select(1).where(col(Suppression.contact_id) == col(Contact.id))
        if f.channel is not None:
            query = query.where(col(Suppression.channel) == f.channel)
        if f.reason is not None:
            query = query.where(col(Suppression.reason) == f.reason)
        return sa.exists(query)

    # --- history ------------------------------------------------------------------------------

    def counted(
        self, f: EventFilter | OpenedFilter | ClickedFilter, query: sa.Select[Any], counted: Any
    ) -> ColumnElement[bool]:
        """min_count..max_count of `counted` among the rows of `query` (correlated to the
        contact). The common cases are plain EXISTS, which stop at the first row."""
        low, high = f.low, f.max_count
        if low <= 1 and high is None:
            return sa.exists(query) if low == 1 else sa.true()
        if high == 0:
            return sa.not_(sa.exists(query))
        count = query.with_only_columns(sa.func.count(counted)).scalar_subquery()
        if high is None:
            return count >= low
        return count.between(low, high)

    def event(self, f: EventFilter) -> ColumnElement[bool]:
        query = _custom_events(f.name)
        if f.within_days is not None:
            query = query.where(col(Event.occurred_at) >= _days_ago(f.within_days))
        if f.where:
            query = query.where(
                col(Event.properties).op("@>", return_type=sa.Boolean())(sa.literal(f.where, JSONB))
            )
        return self.counted(f, query, col(Event.id))

    def engagement(self, f: OpenedFilter | ClickedFilter) -> ColumnElement[bool]:
        kinds = ["open", "click"] if isinstance(f, OpenedFilter) else ["click"]
        query = (
            sa.select(1)
            .select_from(Event)
            .where(col(Event.contact_id) == col(Contact.id), col(Event.kind).in_(kinds))
        )
        if not f.include_machine:
            query = query.where(col(Event.machine).is_(False))
        if f.within_days is not None:
            query = query.where(col(Event.occurred_at) >= _days_ago(f.within_days))
        if isinstance(f, ClickedFilter) and f.link is not None:
            query = query.where(col(Event.link) == f.link)
        if f.template is not None or f.channel is not None or f.journey is not None:
            query = query.join(Message, col(Message.id) == col(Event.message_id))
            if f.template is not None:
                query = query.where(col(Message.template) == f.template)
            if f.channel is not None:
                query = query.where(col(Message.channel) == f.channel)
            if f.journey is not None:
                query = (
                    query.join(Enrollment, col(Enrollment.id) == col(Message.enrollment_id))
                    .join(Journey, col(Journey.id) == col(Enrollment.journey_id))
                    .where(col(Journey.key) == f.journey)
                )
        # Messages, not events: three opens of one email are one email opened. An event with
        # no message (sent in through the API) counts on its own.
        distinct = sa.func.coalesce(col(Event.message_id), col(Event.id)).distinct()
        return self.counted(f, query, distinct)

    def enrolled(self, f: EnrolledFilter) -> ColumnElement[bool]:
        query = _enrollments(f.journey)
        if f.version is not None:
            query = query.where(col(Enrollment.version) == f.version)
        if f.status == "in_flight":
            query = query.where(
                col(Enrollment.status).in_([str(s) for s in ACTIVE_ENROLLMENT_STATUSES])
            )
        elif f.status is not None:
            query = query.where(col(Enrollment.status) == str(f.status))
        if f.exit_reason is not None:
            query = query.where(col(Enrollment.exit_reason) == f.exit_reason)
        if f.within_days is not None:
            query = query.where(col(Enrollment.enrolled_at) >= _days_ago(f.within_days))
        return sa.exists(query)

    def met_goal(self, f: MetGoalFilter) -> ColumnElement[bool]:
        """Who the journey's goal-conversion report counts as having met its goal: a counted
        enrollment that exited with goal_met, or that ended otherwise while the contact meets
        the live goal now (whatever it was sent: only the conversion rate asks for an email)."""
        criteria = (
            live_definition(col(Journey.id))
            .with_only_columns(col(JourneyVersion.definition)["goal"]["criteria"])
            .correlate_except(JourneyVersion)
            .scalar_subquery()
        )
        query = _enrollments(f.journey).where(
            counted_enrollment(col(Journey.id), col(Journey.goal_reset_at)),
            sa.or_(met_goal_while_enrolled(), sa.and_(ended_otherwise(), _goal_met_now(criteria))),
        )
        if f.within_days is not None:
            query = query.where(col(Enrollment.enrolled_at) >= _days_ago(f.within_days))
        return sa.exists(query)


def _in_list(key: str | ColumnElement[str]) -> ColumnElement[bool]:
    return sa.exists(
        sa.select(1)
        .select_from(ListMembership)
        .join(ContactList, col(ContactList.id) == col(ListMembership.list_id))
        .where(col(ListMembership.contact_id) == col(Contact.id), col(ContactList.key) == key)
        .correlate_except(ListMembership, ContactList)
    )


def _custom_events(name: str | ColumnElement[str]) -> sa.Select[Any]:
    return (
        sa.select(1)
        .select_from(Event)
        .where(
            col(Event.contact_id) == col(Contact.id),
            col(Event.kind) == "custom",
            col(Event.name) == name,
        )
        .correlate_except(Event)
    )


def _enrollments(journey: str) -> sa.Select[Any]:
    return (
        sa.select(1)
        .select_from(Enrollment)
        .join(Journey, col(Journey.id) == col(Enrollment.journey_id))
        .where(col(Enrollment.contact_id) == col(Contact.id), col(Journey.key) == journey)
    )


# --- met_goal: a journey condition judged in SQL -----------------------------------------------
#
# As `nurture.journeys.conditions.evaluate` judges it in the goal-conversion report, once the
# enrollment has ended: on the contact's current fields, tags and lists, and the enrollment's
# engagement until now (opens and clicks by people of the messages it sent, the contact's
# custom events since it started). The condition is JSON as `publish` stored it, defaults
# included. Its leaves are judged once, into an object keyed by their JSON text; all / any /
# not then combine those verdicts level by level, GOAL_NESTING levels deep.
#
# A verdict is 0 (false), 1 (unknown: nested deeper than that) or 2 (true), so that not v is
# 2 - v, any is max and all is not any(not ...): every level is one max() over its parts, and
# the next level's SQL is written once in it (Postgres would copy a part named twice, at every
# level). A goal that is unknown is not met.
#
# These subqueries sit several levels below `contacts` and the enrollment, where SQLAlchemy
# does not correlate by itself: each says which tables are its own (`correlate_except`).

GOAL_NESTING = 10
_UNKNOWN, _TRUE = 1, 2


def _goal_met_now(criteria: ColumnElement[Any]) -> ColumnElement[bool]:
    """Does the condition `criteria` (JSON; NULL: no goal) hold for the enrollment now?"""
    nodes = (
        sa.func.jsonb_path_query(criteria, sa.cast(sa.literal("strict $.**"), JSONPATH))
        .table_valued(sa.column("node", JSONB))
        .render_derived(name="goal_nodes")
    )
    node = nodes.c.node
    leaves = (
        sa.select(node, _field_value(node).label("actual"))
        .where(
            sa.func.jsonb_typeof(node) == "object",
            node["type"].astext.in_(("field", "tag", "in_list", "opened", "clicked", "event")),
        )
        .correlate_except(nodes)
        .subquery("leaves")
    )
    key = sa.cast(leaves.c.node, sa.Text())
    # An aggregate, so Postgres computes it once rather than at each use of `verdicts`.
    goal = (
        sa.select(
            criteria.label("criteria"),
            sa.func.jsonb_object_agg(key, _leaf(leaves.c.node, leaves.c.actual)).label("verdicts"),
        )
        .correlate_except(leaves)
        .subquery("goal")
    )
    verdict = _verdict(goal.c.criteria, goal.c.verdicts, GOAL_NESTING)
    return sa.select(verdict == _TRUE).select_from(goal).scalar_subquery()


def _verdict(node: ColumnElement[Any], verdicts: ColumnElement[Any], depth: int) -> Any:
    """A node's verdict: a leaf's from `verdicts`; all / any / not from their parts'."""
    kind = node["type"].astext
    leaf = sa.cast(verdicts.op("->>", return_type=sa.Text())(sa.cast(node, sa.Text())), sa.Integer)
    if depth == 0:
        return sa.case((kind.in_(("all", "any", "not")), _UNKNOWN), else_=leaf)
    parts = _elements(
        sa.case(
            (kind == "not", sa.func.jsonb_build_array(node["condition"], type_=JSONB)),
            else_=node["conditions"],
        )
    )

    def negated_if(flag: ColumnElement[bool], verdict: Any) -> Any:
        """2 - verdict where `flag` holds, the verdict itself elsewhere (naming it once)."""
        negate = sa.cast(flag, sa.Integer)
        return negate * _TRUE + (1 - 2 * negate) * verdict

    part = negated_if(kind == "all", _verdict(parts.c.value, verdicts, depth - 1))
    combined = (
        sa.select(negated_if(kind != "any", sa.func.max(part)))
        .select_from(parts)
        .correlate_except(parts)
        .scalar_subquery()
    )
    return sa.case((kind.in_(("all", "any", "not")), combined), else_=leaf)


def _leaf(node: ColumnElement[Any], actual: ColumnElement[Any]) -> ColumnElement[Any]:
    kind = node["type"].astext
    min_count = sa.cast(node["min_count"].astext, sa.Integer)
    holds = sa.case(
        (kind == "field", _field_holds(node, actual)),
        (kind == "tag", _has_tag(node["tag"].astext)),
        (kind == "in_list", _in_list(node["list"].astext)),
        (kind == "event", _events_since_enrolled(node["name"].astext) >= min_count),
        else_=_engagement(node) >= min_count,
    )
    return sa.case((holds, _TRUE), else_=0)


def _field_value(node: ColumnElement[Any]) -> ColumnElement[Any]:
    """The value of the field a `field` node names, as JSON: the time zone or a custom field;
    NULL for email and phone, which conditions only see as there or not."""
    name = node["field"].astext
    return sa.case(
        (name == "time_zone", sa.func.to_jsonb(col(Contact.time_zone), type_=JSONB)),
        (name.not_in(("email", "phone")), col(Contact.fields).op("->", return_type=JSONB)(name)),
    )


def _field_holds(node: ColumnElement[Any], actual: ColumnElement[Any]) -> ColumnElement[bool]:
    """`conditions._field_matches`: ne, not_contains and not_in also hold for a field that is
    not there (missing, null or "")."""
    name, op, expected = node["field"].astext, node["op"].astext, node["value"]
    present = sa.case(
        (name == "email", sa.func.coalesce(col(Contact.email), "") != ""),
        (name == "phone", sa.func.coalesce(col(Contact.phone), "") != ""),
        else_=sa.func.coalesce(_scalar_text(actual), "") != "",
    )
    item, choice = _elements(actual), _elements(expected)
    in_text = sa.func.strpos(
        sa.func.lower(_scalar_text(actual)),
        sa.case(
            (sa.func.jsonb_typeof(expected) == "string", sa.func.lower(_scalar_text(expected))),
            (sa.func.jsonb_typeof(expected) == "number", _scalar_text(expected)),
        ),
    )
    equal = sa.func.coalesce(_folded(actual) == _folded(expected), False)
    found = sa.or_(
        sa.exists(
            sa.select(1)
            .select_from(item)
            .where(_folded(item.c.value) == _folded(expected))
            .correlate_except(item)
        ),
        sa.func.coalesce(sa.and_(sa.func.jsonb_typeof(actual) == "string", in_text > 0), False),
    )
    listed = sa.exists(
        sa.select(1)
        .select_from(choice)
        .where(_folded(choice.c.value) == _folded(actual))
        .correlate_except(choice)
    )
    return sa.case(
        (op == "exists", present),
        (op == "not_exists", sa.not_(present)),
        (sa.not_(present), op.in_(("ne", "not_contains", "not_in"))),
        (op == "eq", equal),
        (op == "ne", sa.not_(equal)),
        (op == "contains", found),
        (op == "not_contains", sa.not_(found)),
        (op == "in", listed),
        (op == "not_in", sa.not_(listed)),
        else_=_ordered(op, actual, expected),
    )


def _ordered(
    op: ColumnElement[str], actual: ColumnElement[Any], expected: ColumnElement[Any]
) -> ColumnElement[bool]:
    """gt / gte / lt / lte: two numbers, or two strings by code point (ISO dates sort as
    text); NULL (false) for anything else."""
    kinds = sa.func.jsonb_typeof(actual), sa.func.jsonb_typeof(expected)
    left, right = _scalar_text(actual), _scalar_text(expected)
    texts = sa.func.lower(left).collate("C"), sa.func.lower(right).collate("C")
    sign = sa.case(
        (
            sa.and_(kinds[0] == "number", kinds[1] == "number"),
            sa.func.sign(sa.cast(left, sa.Numeric) - sa.cast(right, sa.Numeric)),
        ),
        (
            sa.and_(kinds[0] == "string", kinds[1] == "string"),
            sa.case((texts[0] < texts[1], -1), (texts[0] > texts[1], 1), else_=0),
        ),
    )
    return sa.case(
        (op == "gt", sign > 0), (op == "gte", sign >= 0), (op == "lt", sign < 0), else_=sign <= 0
    )


def _has_tag(tag: ColumnElement[str]) -> ColumnElement[bool]:
    """Tags ignore case in journey conditions (segments' `tag` does not)."""
    tags = sa.func.unnest(col(Contact.tags)).table_valued("tag").render_derived(name="tags")
    return sa.exists(
        sa.select(1)
        .select_from(tags)
        .where(sa.func.lower(tags.c.tag) == sa.func.lower(tag))
        .correlate_except(tags)
    )


def _events_since_enrolled(name: ColumnElement[str]) -> ColumnElement[int]:
    return (
        _custom_events(name)
        .with_only_columns(sa.func.count())
        .where(col(Event.received_at) >= col(Enrollment.enrolled_at))
        .scalar_subquery()
    )


def _engagement(node: ColumnElement[Any]) -> ColumnElement[int]:
    """`Engagement.opens` (opens, plus one for each message clicked but not opened) or
    `Engagement.clicks` (of the link, if named) of the enrollment's messages, by people; of the
    step's latest send if the node names a step."""
    step, link = node["step"].astext, node["link"].astext
    latest = aliased(Message)
    latest_visit = (
        sa.select(sa.func.max(_visit(latest)))
        .where(col(latest.enrollment_id) == col(Enrollment.id), col(latest.step_id) == step)
        .correlate_except(latest)
        .scalar_subquery()
    )
    opened = col(Event.kind) == "open"
    messages = sa.func.count(sa.distinct(col(Message.id)))
    opens = sa.func.count().filter(opened) + messages - messages.filter(opened)
    clicks = sa.func.count().filter(
        col(Event.kind) == "click", sa.or_(link.is_(None), col(Event.link) == link)
    )
    return (
        sa.select(sa.case((node["type"].astext == "opened", opens), else_=clicks))
        .select_from(Event)
        .join(Message, col(Message.id) == col(Event.message_id))
        .where(
            col(Message.enrollment_id) == col(Enrollment.id),
            col(Event.kind).in_(("open", "click")),
            col(Event.machine).is_(False),
            sa.or_(
                step.is_(None),
                sa.and_(col(Message.step_id) == step, _visit(Message) == latest_visit),
            ),
        )
        .correlate_except(Event, Message)
        .scalar_subquery()
    )


def _visit(message: Any) -> ColumnElement[int]:
    """Which send of its step a message is: its key is {enrollment}:{step}:{visit}."""
    return sa.cast(
        sa.func.substring(col(message.idempotency_key), sa.literal(":([0-9]+)$")), sa.Integer
    )


def _scalar_text(value: ColumnElement[Any]) -> ColumnElement[str]:
    """A JSON value as text (a string without its quotes); NULL for JSON null."""
    return value.op("#>>", return_type=sa.Text())(sa.literal([], ARRAY(sa.Text())))


def _folded(value: ColumnElement[Any]) -> ColumnElement[Any]:
    """A JSON value as Python's == sees it in `conditions`: strings ignore case, and true and
    false equal 1 and 0 (numbers already compare by value: 1 equals 1.0)."""
    kind, text = sa.func.jsonb_typeof(value), _scalar_text(value)
    return sa.case(
        (kind == "string", sa.func.to_jsonb(sa.func.lower(text), type_=JSONB)),
        (kind == "boolean", sa.func.to_jsonb(sa.cast(sa.cast(text, sa.Boolean), sa.Integer))),
        else_=value,
    )


def _elements(value: ColumnElement[Any]) -> Any:
    """The elements of a JSON array (none if it is not an array), as a FROM item."""
    array = sa.case((sa.func.jsonb_typeof(value) == "array", value), else_=sa.literal([], JSONB))
    return sa.func.jsonb_array_elements(array).table_valued(sa.column("value", JSONB))
