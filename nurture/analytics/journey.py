"""A journey's numbers: every step's counts and every send step's funnel.

Per step (from `enrollment_steps` and `enrollments`):
- **entered**: enrollments that reached the step (once each, however often they looped);
- **now**: in-flight enrollments whose current step it is;
- **passed**: enrollments that left it for another step (not those that ended there);
- **exits**: enrollments that ended there, by reason (`exit_reason`, or `completed`);
- **outcomes**: how visits left it (a wait's `event`/`timeout`, a branch's rule...), so paths
  of any step type with several exits are counted without code for each type.

Per send step (from `messages`, `events`, `webhook_events`, `suppressions`), in messages:
sent; skipped and failed by reason code (the codes of `nurture.audience.timeline.message_reason`,
so a rule that adds a reason is counted without a change here); delivered (a provider's
delivery report, or the development outbox, which delivers at once); opened by people (a
person's open or click: machine opens by mail proxies are counted apart); clicked (and per
named link); bounced (hard bounces); complained; unsubscribed. Rates are over the messages
that reached an inbox: sent minus bounced.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from nurture.audience.timeline import message_reason
from nurture.db.models import (
    ACTIVE_ENROLLMENT_STATUSES,
    Enrollment,
    EnrollmentStatus,
    EnrollmentStep,
    Journey,
    JourneyVersion,
    Message,
    MessageLinkClick,
    MessageStats,
    MessageStatus,
)
from nurture.errors import NotFound
from nurture.journeys.conversion import GoalConversion, goal_conversion
from nurture.journeys.definition import JourneyDefinition, step_targets

ENDED_STATUSES = (EnrollmentStatus.COMPLETED, EnrollmentStatus.EXITED, EnrollmentStatus.FAILED)
# Outcomes shown per step: a step whose outcome carries free text keeps the most frequent.
MAX_OUTCOMES = 20


@dataclass
class StepStats:
    step_id: str
    step_type: str
    title: str | None
    next_steps: list[tuple[str, str | None]]  # (exit, target) as in the definition
    entered: int = 0
    visits: int = 0
    now: int = 0
    passed: int = 0
    exits: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def exited(self) -> int:
        return sum(self.exits.values())


@dataclass
class SendFunnel:
    step_id: str
    channel: str
    template: str | None
    messages: int = 0
    sent: int = 0
    sending: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    opened: int = 0
    opened_contacts: int = 0
    machine_opens: int = 0
    clicked: int = 0
    clicked_contacts: int = 0
    links: dict[str, int] = field(default_factory=dict)
    bounced: int = 0
    complained: int = 0
    unsubscribed: int = 0

    @property
    def reached(self) -> int:
        """Messages that reached an inbox: the base of the rates."""
        return max(self.sent - self.bounced, 0)

    def rates(self) -> dict[str, float | None]:
        def rate(part: int, whole: int) -> float | None:
            return round(part / whole, 4) if whole else None

        return {
            "delivery_rate": rate(self.delivered, self.sent),
            "open_rate": rate(self.opened, self.reached),
            "click_rate": rate(self.clicked, self.reached),
            "click_to_open_rate": rate(self.clicked, self.opened),
            "bounce_rate": rate(self.bounced, self.sent),
            "complaint_rate": rate(self.complained, self.reached),
            "unsubscribe_rate": rate(self.unsubscribed, self.reached),
        }


@dataclass
class JourneyAnalytics:
    journey_id: uuid.UUID
    journey_key: str
    name: str
    status: str
    version: int | None  # None: all versions together
    live_version: int | None
    versions: list[int]
    enrollments: dict[str, int]
    steps: list[StepStats]
    sends: list[SendFunnel]
    goal: GoalConversion | None

    def step(self, step_id: str) -> StepStats | None:
        return next((s for s in self.steps if s.step_id == step_id), None)


async def find_journey(session: AsyncSession, key: str) -> Journey:
    journey = await session.scalar(select(Journey).where(col(Journey.key) == key))
    if journey is None:
        raise NotFound(f"no journey {key!r}")
    return journey


async def journey_definition(
    session: AsyncSession, journey: Journey, version: int | None
) -> tuple[JourneyDefinition | None, list[int]]:
    """The definition of `version` (None: the live one) and the published version numbers."""
    rows = (
        await session.execute(
            select(col(JourneyVersion.version), col(JourneyVersion.definition))
            .where(col(JourneyVersion.journey_id) == journey.id)
            .order_by(col(JourneyVersion.version))
        )
    ).all()
    versions = [number for number, _ in rows]
    if version is not None and version not in versions:
        raise NotFound(f"journey {journey.key!r} has no version {version}")
    wanted = version if version is not None else (versions[-1] if versions else None)
    raw = next((definition for number, definition in rows if number == wanted), None)
    if raw is None:  # never published: show the draft's steps, if they read
        raw = journey.draft
    try:
        return JourneyDefinition.model_validate(raw), versions
    except ValueError:
        return None, versions


def graph_order(definition: JourneyDefinition) -> list[str]:
    """Step ids from the start, breadth first along the exits in their order, then any step
    nothing leads to (JSONB keeps no key order, so the stored order says nothing)."""
    order: list[str] = []
    queue = [definition.start]
    while queue:
        step_id = queue.pop(0)
        if step_id in order or step_id not in definition.steps:
            continue
        order.append(step_id)
        queue.extend(t for _, t in step_targets(definition.steps[step_id]) if t is not None)
    return order + sorted(set(definition.steps) - set(order))


def enrollment_filter(journey_id: uuid.UUID, version: int | None) -> ColumnElement[bool]:
    condition = col(Enrollment.journey_id) == journey_id
    if version is not None:
        condition = and_(condition, col(Enrollment.version) == version)
    return condition


async def journey_analytics(
    session: AsyncSession,
    key: str,
    version: int | None = None,
    *,
    with_goal: bool = True,
    with_sends: bool = True,
) -> JourneyAnalytics:
    """`with_goal`/`with_sends` False leave out the goal conversion and the send funnels (the
    live flowchart needs only the step counts)."""
    journey = await find_journey(session, key)
    definition, versions = await journey_definition(session, journey, version)
    of_journey = enrollment_filter(journey.id, version)

    steps: dict[str, StepStats] = {}
    if definition is not None:
        for step_id in graph_order(definition):
            step = definition.steps[step_id]
            steps[step_id] = StepStats(step_id, step.type, step.title, step_targets(step))

    def stats(step_id: str, step_type: str | None = None) -> StepStats:
        if step_id not in steps:  # a step of another version than the one shown
            steps[step_id] = StepStats(step_id, step_type or "?", None, [])
        return steps[step_id]

    # (enrollment, step, visit) is unique: an enrollment's first visit counts it as entered,
    # and it passed once that visit was left for another step. No DISTINCT (a sort) on big
    # journeys. The visit an enrollment ended in (its goal met there, the last step done) is
    # left when it ended, at its current step: an exit, not a pass.
    first = col(EnrollmentStep.visit) == 1
    ended_here = and_(
        col(Enrollment.ended_at) == col(EnrollmentStep.left_at),
        col(Enrollment.current_step) == col(EnrollmentStep.step_id),
    )
    rows = await session.execute(
        select(
            col(EnrollmentStep.step_id),
            func.min(col(EnrollmentStep.step_type)),
            func.count().filter(first),
            func.count(),
            func.count().filter(
                first, col(EnrollmentStep.left_at).is_not(None), ~func.coalesce(ended_here, False)
            ),
        )
        .join(Enrollment, col(Enrollment.id) == col(EnrollmentStep.enrollment_id))
        .where(of_journey)
        .group_by(col(EnrollmentStep.step_id))
    )
    for step_id, step_type, entered, visits, passed in rows:
        s = stats(step_id, step_type)
        s.entered, s.visits, s.passed = entered, visits, passed

    outcome_rows = await session.execute(
        select(col(EnrollmentStep.step_id), col(EnrollmentStep.outcome), func.count())
        .join(Enrollment, col(Enrollment.id) == col(EnrollmentStep.enrollment_id))
        .where(of_journey, col(EnrollmentStep.outcome).is_not(None))
        .group_by(col(EnrollmentStep.step_id), col(EnrollmentStep.outcome))
        .order_by(func.count().desc())
    )
    for step_id, outcome, count in outcome_rows:
        s = stats(step_id)
        if len(s.outcomes) < MAX_OUTCOMES:
            s.outcomes[str(outcome)] = count

    enrollment_rows = await session.execute(
        select(
            col(Enrollment.status),
            col(Enrollment.current_step),
            col(Enrollment.exit_reason),
            func.count(),
        )
        .where(of_journey)
        .group_by(col(Enrollment.status), col(Enrollment.current_step), col(Enrollment.exit_reason))
    )
    totals: dict[str, int] = defaultdict(int)
    for status, current_step, exit_reason, count in enrollment_rows:
        totals[status] += count
        if current_step is None:
            continue
        if status in ACTIVE_ENROLLMENT_STATUSES:
            stats(current_step).now += count
        elif status in ENDED_STATUSES:
            reason = exit_reason or status
            exits = stats(current_step).exits
            exits[reason] = exits.get(reason, 0) + count

    sends = await _send_funnels(session, of_journey, definition) if with_sends else []
    goal = await goal_conversion(session, key) if with_goal else None
    return JourneyAnalytics(
        journey_id=journey.id,
        journey_key=journey.key,
        name=journey.name,
        status=journey.status,
        version=version,
        live_version=versions[-1] if versions else None,
        versions=versions,
        enrollments=dict(totals),
        steps=list(steps.values()),
        sends=sends,
        goal=goal,
    )


async def _send_funnels(
    session: AsyncSession, of_journey: ColumnElement[bool], definition: JourneyDefinition | None
) -> list[SendFunnel]:
    funnels: dict[str, SendFunnel] = {}
    if definition is not None:
        for step_id in graph_order(definition):
            step = definition.steps[step_id]
            if step.type in ("send_email", "send_sms"):
                template = getattr(step, "template", None)
                channel = "sms" if step.type == "send_sms" else "email"
                funnels[step_id] = SendFunnel(step_id, channel, template)

    def funnel(step_id: str | None, channel: str = "email") -> SendFunnel:
        name = step_id or "?"
        if name not in funnels:
            funnels[name] = SendFunnel(name, channel, None)
        return funnels[name]

    delivered_at_once = col(Message.provider) == "outbox"
    rows = await session.execute(
        select(
            col(Message.step_id),
            col(Message.channel),
            col(Message.status),
            col(Message.reason),
            func.count(),
            func.count().filter(delivered_at_once),
        )
        .join(Enrollment, col(Enrollment.id) == col(Message.enrollment_id))
        .where(of_journey)
        .group_by(
            col(Message.step_id), col(Message.channel), col(Message.status), col(Message.reason)
        )
    )
    for message_step, channel, status, reason, count, at_once in rows:
        f = funnel(message_step, str(channel))
        f.messages += count
        if status == MessageStatus.SENT:
            f.sent += count
            f.delivered += at_once
        elif status == MessageStatus.SENDING:
            f.sending += count
        else:
            # Any other status (skipped, failed, or one a later rule adds) by reason code.
            explained = message_reason(reason)
            code = explained.code if explained else "unknown"
            bucket = f.failed if status == MessageStatus.FAILED else f.skipped
            bucket[code] = bucket.get(code, 0) + count

    # What became of each message, from `message_stats` (kept by triggers as events, reports
    # and suppressions arrive): one hash join over the journey's sent messages.
    human_open = col(MessageStats.opened_at).is_not(None)
    human_click = col(MessageStats.clicked_at).is_not(None)
    rows = await session.execute(
        select(
            col(Message.step_id),
            func.count().filter(human_open),
            func.count(distinct(col(Message.contact_id))).filter(human_open),
            func.count().filter(human_click),
            func.count(distinct(col(Message.contact_id))).filter(human_click),
            func.count().filter(col(MessageStats.machine_opened_at).is_not(None)),
            func.count().filter(col(MessageStats.delivered_at).is_not(None)),
            func.count().filter(col(MessageStats.bounced_at).is_not(None)),
            func.count().filter(col(MessageStats.complained_at).is_not(None)),
            func.count().filter(col(MessageStats.unsubscribed_at).is_not(None)),
        )
        .join(Enrollment, col(Enrollment.id) == col(Message.enrollment_id))
        .join(MessageStats, col(MessageStats.message_id) == col(Message.id))
        .where(of_journey, col(Message.status) == MessageStatus.SENT)
        .group_by(col(Message.step_id))
    )
    for row in rows:
        f = funnel(row[0])
        counts: list[Any] = list(row[1:])
        (
            f.opened,
            f.opened_contacts,
            f.clicked,
            f.clicked_contacts,
            f.machine_opens,
            reported,
            f.bounced,
            f.complained,
            f.unsubscribed,
        ) = (int(n or 0) for n in counts)
        f.delivered += reported

    links = await session.execute(
        select(col(Message.step_id), col(MessageLinkClick.link), func.count())
        .join(Message, col(Message.id) == col(MessageLinkClick.message_id))
        .join(Enrollment, col(Enrollment.id) == col(Message.enrollment_id))
        .where(of_journey)
        .group_by(col(Message.step_id), col(MessageLinkClick.link))
    )
    for link_step, link, count in links:
        funnel(link_step).links[link] = count
    for f in funnels.values():
        f.delivered = min(f.delivered, f.sent)
    return list(funnels.values())
