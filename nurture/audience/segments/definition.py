"""A segment filter: which contacts belong to a dynamic audience, as plain JSON.

Same style as the journey conditions (`nurture.journeys.definition`): every union is tagged by
``type``, unknown keys are refused, field conditions say ``field``/``op``/``value`` with the same
operator names. These models only check the shape; whether a value fits the field and the
operator (a number for ``gt``, a date for ``before``...) is checked by the compiler, which knows
the field types and reports every problem with its path.

Unlike journey conditions, which look at one enrollment's events, these look at the contact's
whole history: every list, every event, every enrollment. `met_goal` is where the two meet: it
judges a journey's goal (a journey condition) as the goal-conversion report does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, model_validator

from nurture.db.models import EnrollmentStatus
from nurture.journeys.definition import Key

Channel = Literal["email", "sms"]

FieldOperator = Literal[
    "eq", "ne", "gt", "gte", "lt", "lte", "contains", "starts_with", "in",
    "exists", "not_exists", "before", "after", "within_last_days", "within_next_days",
]  # fmt: skip

# Days are bounded so that `now() - N days` cannot overflow a timestamp.
Days = Annotated[int, Field(ge=1, le=36_500)]


class _Strict(BaseModel):
    """Unknown keys are refused, so a typo such as "within_day" is an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldFilter(_Strict):
    """A contact attribute compared with a value.

    `field` is a built-in (email, phone, external_id, time_zone, created_at, updated_at) or a
    custom field as ``fields.<name>``. String comparisons ignore case, as in journey conditions.
    """

    type: Literal["field"]
    field: str = Field(min_length=1, max_length=135, examples=["fields.plan", "email"])
    op: FieldOperator = "eq"
    value: JsonValue = None

    @model_validator(mode="after")
    def _value_given(self) -> FieldFilter:
        if self.op in ("exists", "not_exists"):
            if self.value is not None:
                raise ValueError(f"operator {self.op!r} takes no value")
        elif self.value is None:
            raise ValueError(f"operator {self.op!r} needs a value")
        return self


class TagFilter(_Strict):
    """Has (or has not) a tag; with `tags`, all of them (`match: all`) or any (`match: any`).

    Tags match exactly (case matters) so that the GIN index on tags answers the query."""

    type: Literal["tag"]
    tag: str | None = Field(default=None, min_length=1, max_length=100)
    tags: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        default=None, min_length=1, max_length=100
    )
    match: Literal["all", "any"] = "all"
    op: Literal["has", "has_not"] = "has"

    @model_validator(mode="after")
    def _one_of_tag_or_tags(self) -> TagFilter:
        if (self.tag is None) == (self.tags is None):
            raise ValueError("give exactly one of tag, tags")
        return self

    @property
    def wanted(self) -> list[str]:
        return [self.tag] if self.tag is not None else list(dict.fromkeys(self.tags or []))


class ListFilter(_Strict):
    type: Literal["in_list"]
    list: Key


class ConsentFilter(_Strict):
    """The recorded consent choice on a channel; `none` means no choice was ever recorded."""

    type: Literal["consent"]
    channel: Channel
    status: Literal["granted", "revoked", "none"] = "granted"


class SuppressedFilter(_Strict):
    """Suppressed (unsubscribed, bounced, complained) on a channel, or on any channel."""

    type: Literal["suppressed"]
    channel: Channel | None = None
    reason: Literal["unsubscribed", "bounced", "complained"] | None = None


class _Counted(_Strict):
    """How often, and how recently: `min_count` to `max_count` times in the last `within_days`.

    `max_count: 0` means "never" ("did not purchase in the last 30 days")."""

    min_count: int = Field(default=1, ge=0)
    max_count: int | None = Field(default=None, ge=0)
    within_days: Days | None = Field(default=None, description="none: ever")

    @model_validator(mode="after")
    def _range(self) -> Any:
        if self.max_count is not None and self.max_count < self.low:
            raise ValueError("max_count is below min_count")
        return self

    @property
    def low(self) -> int:
        """The least count. `max_count: 0` alone reads as "never", so the default min_count of
        1 does not apply then."""
        if self.max_count == 0 and "min_count" not in self.model_fields_set:
            return 0
        return self.min_count


class EventFilter(_Counted):
    """Performed a custom event, e.g. `purchase` at least 2 times in the last 30 days.

    `where` lists event properties that must match exactly (JSON equality, case matters)."""

    type: Literal["event"]
    name: str = Field(min_length=1, max_length=128)
    where: dict[str, JsonValue] = Field(default_factory=dict)


class _Engagement(_Counted):
    """Engagement with messages; counts are of distinct messages, not of events."""

    template: str | None = Field(default=None, min_length=1, max_length=255)
    journey: Key | None = None
    channel: Channel | None = None
    include_machine: bool = Field(
        default=False,
        description="also count opens and clicks by mail proxies and link scanners "
        "(Apple Mail Privacy Protection...), which are not people",
    )


class OpenedFilter(_Engagement):
    """Opened a message; a click proves an open, so it counts as one too."""

    type: Literal["opened"]


class ClickedFilter(_Engagement):
    type: Literal["clicked"]
    link: str | None = Field(default=None, min_length=1, max_length=128)


class EnrolledFilter(_Strict):
    """Enrolled in a journey, optionally in one published version, with a status or exit
    reason, e.g. ``{"type": "enrolled_in", "journey": "x", "exit_reason": "goal_met"}`` (the
    enrollment ended because the goal was met; `met_goal` also counts a goal met later)."""

    type: Literal["enrolled_in"]
    journey: Key
    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="the published version; none: any"
    )
    status: EnrollmentStatus | Literal["in_flight"] | None = Field(
        default=None, description="in_flight: pending or active"
    )
    exit_reason: str | None = Field(default=None, min_length=1, max_length=64)
    within_days: Days | None = Field(default=None, description="enrolled in the last N days")


class MetGoalFilter(_Strict):
    """Met the goal of a journey, as its goal-conversion report counts it
    (`nurture.journeys.conversion`): an enrollment exited because the goal was met, or ended
    otherwise and the contact meets the journey's current goal now. Contacts refused at entry
    because they already met the goal were never enrolled, so they do not count."""

    type: Literal["met_goal"]
    journey: Key
    within_days: Days | None = Field(
        default=None, description="through an enrollment that started in the last N days"
    )


class AllFilter(_Strict):
    type: Literal["all"]
    conditions: list[Filter] = Field(min_length=1, max_length=100)


class AnyFilter(_Strict):
    type: Literal["any"]
    conditions: list[Filter] = Field(min_length=1, max_length=100)


class NotFilter(_Strict):
    type: Literal["not"]
    condition: Filter


Filter = Annotated[
    FieldFilter
    | TagFilter
    | ListFilter
    | ConsentFilter
    | SuppressedFilter
    | EventFilter
    | OpenedFilter
    | ClickedFilter
    | EnrolledFilter
    | MetGoalFilter
    | AllFilter
    | AnyFilter
    | NotFilter,
    Field(discriminator="type"),
]

FILTER: TypeAdapter[Filter] = TypeAdapter(Filter)


def dump(filter: Filter) -> dict[str, Any]:
    """The JSON stored for a filter: only what was written, so stored segments do not pick up
    defaults that may change later."""
    data: dict[str, Any] = FILTER.dump_python(filter, mode="json", exclude_unset=True)
    return data
