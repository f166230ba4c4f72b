"""Goal conversion of a journey, with HubSpot's workflow-goal semantics.

Who counts, per distinct contact (a contact enrolled several times counts once):

- **enrolled**: contacts with an enrollment that was not refused at entry (`not_enrolled`, e.g.
  the goal was already met) and that started at or after `Journey.goal_reset_at`, if set.
  Contacts refused because they already met the goal are reported apart, never in the rate.
- **met the goal**: an enrollment that exited with `goal_met`, or an enrollment that ended
  otherwise (completed, exit step, unenrolled, failed) whose contact meets the *current* live
  goal now: HubSpot counts a contact who converts after leaving the workflow too.
- **converted**: met the goal and was sent a marketing email (a `sent` email message) by one of
  those enrollments. **conversion_rate** = converted / enrolled.

Test contacts (`contacts.is_test`, docs/launching.md) are never counted.

Removing the goal resets the counts (`publish` sets `goal_reset_at`); editing it does not, so
a changed goal is judged over the whole history.

The segment filter `met_goal` selects the same "met the goal" contacts with the SQL below
(`counted_enrollment`, `met_goal_while_enrolled`, `ended_otherwise`, `live_definition`); only
the goal after the enrollment is judged in SQL there, rather than with `evaluate`.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, distinct, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from nurture.contracts import ContactFacts, EnrollmentEvent, ReceivedEvent
from nurture.db.models import (
    Contact,
    ContactList,
    Enrollment,
    EnrollmentStatus,
    Event,
    Journey,
    JourneyVersion,
    ListMembership,
    Message,
    MessageStatus,
)
from nurture.errors import NotFound
from nurture.journeys.conditions import Engagement, evaluate
from nurture.journeys.definition import (
    AllCondition,
    AnyCondition,
    ClickedCondition,
    Condition,
    EventCondition,
    Goal,
    NotCondition,
    OpenedCondition,
)
from nurture.journeys.facts import facts_of

# Contacts whose goal is evaluated in Python per round trip: bounded memory for big journeys.
PAGE_SIZE = 500

_ENDED = (EnrollmentStatus.COMPLETED, EnrollmentStatus.EXITED, EnrollmentStatus.FAILED)
_GOAL_MET = "goal_met"
_GOAL_ALREADY_MET = "goal_already_met"


# --- who counts, in SQL: shared with the `met_goal` segment filter ------------------------------


def live_definition(journey_id: Any) -> Select[Any]:
    """The definition of the journey's live (latest published) version, whose goal is the
    current goal; `journey_id` is a value, or a column to correlate with."""
    return (
        select(col(JourneyVersion.definition))
        .where(col(JourneyVersion.journey_id) == journey_id)
        .order_by(col(JourneyVersion.version).desc())
        .limit(1)
    )


def of_journey(journey_id: Any, since: Any) -> ColumnElement[bool]:
    """Enrollments in the journey that started at or after its goal reset `since`: a datetime,
    None, or the column `Journey.goal_reset_at` (NULL: never reset)."""
    started = col(Enrollment.enrolled_at)
    if isinstance(since, datetime):
        reset: ColumnElement[bool] = started >= since
    elif since is None:
        reset = true()
    else:
        reset = or_(since.is_(None), started >= since)
    return and_(col(Enrollment.journey_id) == journey_id, reset)


def counted_enrollment(journey_id: Any, since: Any) -> ColumnElement[bool]:
    """The enrollments the report counts: not refused at entry (`not_enrolled`)."""
    return and_(
        of_journey(journey_id, since), col(Enrollment.status) != EnrollmentStatus.NOT_ENROLLED
    )


def met_goal_while_enrolled() -> ColumnElement[bool]:
    return col(Enrollment.exit_reason) == _GOAL_MET


def ended_otherwise() -> ColumnElement[bool]:
    """Ended (completed, exit step, unenrolled, failed) without meeting the goal: its contact
    met the goal *after* if it meets the current goal now."""
    return and_(
        col(Enrollment.status).in_(_ENDED),
        or_(col(Enrollment.exit_reason).is_(None), col(Enrollment.exit_reason) != _GOAL_MET),
    )


@dataclass(frozen=True)
class GoalConversion:
    journey_key: str
    goal: Goal | None
    counting_since: datetime | None
    enrolled: int
    sent_marketing_email: int
    met_goal_while_enrolled: int
    met_goal_after: int
    converted: int
    conversion_rate: float | None
    not_enrolled_goal_already_met: int


async def goal_conversion(
    session: AsyncSession, journey_key: str, *, page_size: int = PAGE_SIZE
) -> GoalConversion:
    """Count the journey's goal conversion now; `NotFound` for an unknown journey."""
    journey = await session.scalar(select(Journey).where(col(Journey.key) == journey_key))
    if journey is None:
        raise NotFound(f"no journey {journey_key!r}")
    live = await session.scalar(live_definition(journey.id))
    raw_goal = live.get("goal") if live is not None else None
    goal = Goal.model_validate(raw_goal) if raw_goal else None
    since = journey.goal_reset_at

    # Test contacts try the journey out before and during a launch: never in its analytics.
    real = col(Enrollment.contact_id).not_in(
        select(col(Contact.id)).where(col(Contact.is_test)).correlate(None)
    )
    counted = and_(counted_enrollment(journey.id, since), real)
    emailed = _emailed_contacts(counted)
    # correlate(None): these are nested in queries over enrollments too, and must stay
    # independent subqueries rather than be tied to the outer row.
    met_while = (
        select(col(Enrollment.contact_id)).where(counted, met_goal_while_enrolled()).correlate(None)
    )

    enrolled = await _count_contacts(session, select(col(Enrollment.contact_id)).where(counted))
    sent_email = await _count_contacts(session, emailed)
    met_while_count = await _count_contacts(session, met_while)
    converted = await _count_contacts(
        session, met_while.where(col(Enrollment.contact_id).in_(emailed))
    )
    refused = await _count_contacts(
        session,
        select(col(Enrollment.contact_id)).where(
            of_journey(journey.id, since),
            real,
            col(Enrollment.status) == EnrollmentStatus.NOT_ENROLLED,
            col(Enrollment.exit_reason) == _GOAL_ALREADY_MET,
        ),
    )

    met_after = met_after_emailed = 0
    if goal is not None:
        # Ended for another reason, and not already counted as having met the goal while
        # enrolled (in another enrollment), so the two counts add up to "met the goal".
        ended = and_(counted, ended_otherwise(), col(Enrollment.contact_id).not_in(met_while))
        async for page in _contact_pages(session, ended, page_size):
            met = await _meeting_goal_now(session, goal, ended, page)
            met_after += len(met)
            if met:
                met_after_emailed += await _count_contacts(
                    session, emailed.where(col(Enrollment.contact_id).in_(met))
                )
    converted += met_after_emailed

    return GoalConversion(
        journey_key=journey.key,
        goal=goal,
        counting_since=since,
        enrolled=enrolled,
        sent_marketing_email=sent_email,
        met_goal_while_enrolled=met_while_count,
        met_goal_after=met_after,
        converted=converted,
        conversion_rate=converted / enrolled if enrolled else None,
        not_enrolled_goal_already_met=refused,
    )


def _emailed_contacts(counted: Any) -> Select[Any]:
    """Contacts of counted enrollments that were sent at least one email by this journey."""
    return (
        select(col(Enrollment.contact_id))
        .join(Message, col(Message.enrollment_id) == col(Enrollment.id))
        .where(
            counted,
            col(Message.channel) == "email",
            col(Message.status) == MessageStatus.SENT,
        )
        .correlate(None)
    )


async def _count_contacts(session: AsyncSession, contacts: Select[Any]) -> int:
    subquery = contacts.subquery()
    total = await session.scalar(select(func.count(distinct(subquery.c.contact_id))))
    return int(total or 0)


async def _contact_pages(
    session: AsyncSession, where: Any, page_size: int
) -> AsyncIterator[list[uuid.UUID]]:
    """Distinct contacts matching `where`, a page at a time (keyset on the id, so the pages
    stay cheap however deep they go)."""
    after: uuid.UUID | None = None
    while True:
        query = select(col(Enrollment.contact_id)).where(where).distinct()
        if after is not None:
            query = query.where(col(Enrollment.contact_id) > after)
        page = list(
            await session.scalars(query.order_by(col(Enrollment.contact_id)).limit(page_size))
        )
        if not page:
            return
        yield page
        after = page[-1]


async def _meeting_goal_now(
    session: AsyncSession, goal: Goal, ended: Any, contact_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """Which of these contacts meet `goal` now, judged as the workflow would judge it: their
    current facts, and the engagement of one of their ended enrollments."""
    facts = await contacts_facts(session, contact_ids)
    rows = (
        await session.execute(
            select(col(Enrollment.id), col(Enrollment.contact_id), col(Enrollment.enrolled_at))
            .where(ended, col(Enrollment.contact_id).in_(contact_ids))
            .order_by(col(Enrollment.enrolled_at))
        )
    ).all()
    no_engagement = Engagement(events=(), latest_visit={})
    engagement: dict[uuid.UUID, Engagement] = {}
    if _uses_engagement(goal.criteria):
        engagement = await _engagement(session, rows)
    met: set[uuid.UUID] = set()
    for enrollment_id, contact_id, _ in rows:
        contact = facts.get(contact_id)
        if contact is None or contact_id in met:
            continue
        if evaluate(goal.criteria, contact, engagement.get(enrollment_id, no_engagement)):
            met.add(contact_id)
    return sorted(met)


async def contacts_facts(
    session: AsyncSession, contact_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, ContactFacts]:
    """`ContactFacts` for many contacts in two queries, built by the same `facts_of` as the
    workflow's `load_contact` activity builds them one at a time, so a goal judged here agrees
    with the one the enrollment checks. Deleted contacts are absent."""
    ids = list(contact_ids)
    contacts = await session.scalars(select(Contact).where(col(Contact.id).in_(ids)))
    lists: dict[uuid.UUID, list[str]] = defaultdict(list)
    memberships = await session.execute(
        select(col(ListMembership.contact_id), col(ContactList.key))
        .join(ContactList, col(ListMembership.list_id) == col(ContactList.id))
        .where(col(ListMembership.contact_id).in_(ids))
        .order_by(col(ContactList.key))
    )
    for contact_id, key in memberships:
        lists[contact_id].append(key)
    return {contact.id: facts_of(contact, lists[contact.id]) for contact in contacts}


def _uses_engagement(condition: Condition) -> bool:
    match condition:
        case OpenedCondition() | ClickedCondition() | EventCondition():
            return True
        case AllCondition() | AnyCondition():
            return any(_uses_engagement(c) for c in condition.conditions)
        case NotCondition():
            return _uses_engagement(condition.condition)
    return False


async def _engagement(
    session: AsyncSession, enrollments: Sequence[Any]
) -> dict[uuid.UUID, Engagement]:
    """Each enrollment's engagement as its workflow would hold it, extended to now: opens and
    clicks (by people, not mail proxies) of the messages it sent, and the contact's custom
    events received since it started. What happened after the enrollment ended counts too,
    since the goal is judged on the contact's current state."""
    by_id = {row[0]: row for row in enrollments}
    messages = (
        await session.execute(
            select(
                col(Message.id),
                col(Message.enrollment_id),
                col(Message.step_id),
                col(Message.idempotency_key),
            ).where(col(Message.enrollment_id).in_(list(by_id)))
        )
    ).all()
    latest_visit: dict[uuid.UUID, dict[str, int]] = defaultdict(dict)
    sent_by: dict[uuid.UUID, tuple[uuid.UUID, str | None, int]] = {}
    for message_id, enrollment_id, step, key in messages:
        assert enrollment_id is not None  # selected by it
        # The key is {enrollment}:{step}:{visit}: which send of the step this message was.
        visit = int(key.rsplit(":", 1)[1])
        sent_by[message_id] = (enrollment_id, step, visit)
        if step is not None:
            visits = latest_visit[enrollment_id]
            visits[step] = max(visits.get(step, 0), visit)

    received: dict[uuid.UUID, list[tuple[datetime, EnrollmentEvent]]] = defaultdict(list)
    if sent_by:
        engagement_events = await session.scalars(
            select(Event).where(
                col(Event.message_id).in_(list(sent_by)),
                col(Event.kind).in_(("open", "click")),
                col(Event.machine).is_(False),
            )
        )
        for event in engagement_events:
            assert event.message_id is not None
            enrollment_id, step, visit = sent_by[event.message_id]
            received[enrollment_id].append(
                (
                    event.received_at,
                    EnrollmentEvent(
                        event_id=event.dedupe_key,
                        kind="click" if event.kind == "click" else "open",
                        step=step,
                        visit=visit,
                        link=event.link,
                        occurred_at=event.occurred_at,
                    ),
                )
            )

    contacts = {row[1] for row in enrollments}
    earliest = min(row[2] for row in enrollments)
    custom_events = await session.scalars(
        select(Event).where(
            col(Event.contact_id).in_(contacts),
            col(Event.kind) == "custom",
            col(Event.received_at) >= earliest,
        )
    )
    for event in custom_events:
        for enrollment_id, contact_id, enrolled_at in enrollments:
            if contact_id == event.contact_id and event.received_at >= enrolled_at:
                received[enrollment_id].append(
                    (
                        event.received_at,
                        EnrollmentEvent(
                            event_id=event.dedupe_key,
                            kind="custom",
                            name=event.name,
                            properties=event.properties,
                            occurred_at=event.occurred_at,
                        ),
                    )
                )

    result: dict[uuid.UUID, Engagement] = {}
    for enrollment_id, events in received.items():
        events.sort(key=lambda pair: pair[0])
        result[enrollment_id] = Engagement(
            events=[
                ReceivedEvent(seq=seq, event=event, received_at=at)
                for seq, (at, event) in enumerate(events, start=1)
            ],
            latest_visit=latest_visit[enrollment_id],
        )
    for enrollment_id in by_id:
        result.setdefault(
            enrollment_id, Engagement(events=(), latest_visit=latest_visit[enrollment_id])
        )
    return result
