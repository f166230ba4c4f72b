"""One path for every change to a contact, whatever made it.

A contact changes through the API (upsert, patch, lists), a CSV import, a journey step
(`update_contact`, `add_to_list`, `remove_from_list`), a provider webhook or an unsubscribe link
(suppression), and a custom event that segments and triggers look at. Each of them, in the
transaction that makes the change, calls `record`: one `contact_changes` row saying what
changed and who changed it. Once that has committed, `Announcer.announce` tells everything
that depends on the contact, in this order:

1. the contact's other in-flight enrollments: `contact_changed` (goals, branches and waits see
   the new values before their next action) and, for a custom event, the `event` itself;
   the enrollment whose step made the change already holds the new values and is not told;
2. the journeys it now starts: `list_joined` journeys of the lists it joined, `event` journeys
   of the event, `segment_entered` journeys of the watched segments it entered (re-checked at
   once, not at the next sweep);
3. then marks the row announced (with the marks of concurrent announcements, in one statement:
   `nurture.audience.announced`).

The row is a transactional outbox: a change that committed is never left unannounced. The
process that made the change holds a short lease on the row and announces it straight away;
if it dies first, or Temporal is unreachable, the relay in the worker (`keep_relaying`) takes
the row once the lease has run out. Announcing twice is harmless: a signal only marks the
contact for reloading (or repeats an event id the workflow has seen), a journey already
started by this change is found by the enrollment's `change_id` and not started again, and a
segment entry is a row admitted once.

Cascades end by the journeys' entry rules: a step that adds the contact to a list starting the
same journey finds it still enrolled; two journeys that feed each other stop at the first one
whose re-entry rule (`never`, `after_exit`, `max_entries`) refuses. See docs/changes.md.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from temporalio.client import Client

from nurture.audience.announced import MARK_ANNOUNCED, mark_announced_together
from nurture.audience.segments.membership import observe
from nurture.concurrency import gather_limited
from nurture.contracts import EnrollmentEvent
from nurture.db.engine import SessionFactory
from nurture.db.lean import autocommit, driver_connection
from nurture.db.models import (
    ACTIVE_ENROLLMENT_STATUSES,
    ContactChangeRecord,
    Enrollment,
    Event,
    Journey,
    ScoringRule,
)
from nurture.errors import Conflict, NotFound
from nurture.journeys.definition import EventTrigger
from nurture.journeys.enrollments import (
    TEMPORAL_UNREACHABLE,
    EnrollmentOptions,
    enroll,
    parsed_definition,
    signal_workflow,
    tell_contact_changed,
)
from nurture.journeys.publishing import latest_version
from nurture.journeys.triggers import admit, live_journeys
from nurture.scoring import rescore, rules_in_use, with_score

logger = logging.getLogger(__name__)

# How long the process that made a change has to announce it before the relay may.
LEASE = timedelta(seconds=30)
_SIGNAL_CONCURRENCY = 20
_RELAY_CONCURRENCY = 10
_ANNOUNCE_CONCURRENCY = 20  # a request that changed many contacts (a list of 1,000 added)


@dataclass(frozen=True)
class Change:
    """What one source changed on one contact (see `ContactChangeRecord.changes`)."""

    contact_id: uuid.UUID
    source: str
    changes: Mapping[str, Any] = field(default_factory=dict)
    joined_lists: Sequence[str] = ()
    event_id: uuid.UUID | None = None
    # Whether the contact's enrollments must reload it: not for an event alone.
    reload: bool = True
    origin_enrollment_id: uuid.UUID | None = None


async def record(session: AsyncSession, change: Change, *, announce_here: bool = True) -> int:
    """Write the change in the caller's transaction; its id, to `announce` after the commit.

    `announce_here=False` leaves it to the relay at once (a caller with nothing to wait for,
    e.g. a provider webhook). Lead scoring runs here (`nurture.scoring.rescore`): the score
    a change moves is part of the same change."""
    change = await _scored(session, change)
    change_id = await session.scalar(
        insert(ContactChangeRecord)
        .values(_row(change, announce_here))
        .returning(col(ContactChangeRecord.id))
    )
    assert change_id is not None
    return int(change_id)


async def record_many(
    session: AsyncSession, changes: Sequence[Change], lease: timedelta = LEASE
) -> list[int]:
    """`record` for many contacts in one statement (an import batch); their ids."""
    if not changes:
        return []
    rules = await rules_in_use(session)
    if rules:
        changes = [await _scored(session, change, rules) for change in changes]
    rows = [_row(change, True, lease) for change in changes]
    ids = await session.scalars(
        insert(ContactChangeRecord).values(rows).returning(col(ContactChangeRecord.id))
    )
    return [int(change_id) for change_id in ids if change_id is not None]


async def mark_announced(sessions: SessionFactory, change_ids: Sequence[int]) -> None:
    """For a caller that announced its changes in bulk its own way (a CSV import: BulkEnroll
    runs and a segment sweep instead of one announcement per contact)."""
    for start in range(0, len(change_ids), 10_000):
        async with driver_connection(sessions) as connection:  # each chunk commits by itself
            await connection.execute(MARK_ANNOUNCED, list(change_ids[start : start + 10_000]))


async def _scored(
    session: AsyncSession, change: Change, rules: Sequence[ScoringRule] | None = None
) -> Change:
    """The change, with the score it moves (and then a reload of the enrollments)."""
    pair = await rescore(session, change.contact_id, change.changes, change.event_id, rules)
    if pair is None:
        return change
    return replace(change, changes=with_score(change.changes, pair), reload=True)


def _row(change: Change, announce_here: bool, lease: timedelta = LEASE) -> dict[str, Any]:
    return {
        "contact_id": change.contact_id,
        "source": change.source[:160],
        "changes": dict(change.changes),
        "joined_lists": list(change.joined_lists),
        "event_id": change.event_id,
        "reload": change.reload,
        "origin_enrollment_id": change.origin_enrollment_id,
        "lease_until": sa.func.now() + lease if announce_here else None,
    }


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{name: [before, after]} for every key whose value differs (None when absent)."""
    return {
        name: [before.get(name), after.get(name)]
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    }


def tag_changes(before: Sequence[str], after: Sequence[str]) -> dict[str, list[str]]:
    added = [tag for tag in after if tag not in before]
    removed = [tag for tag in before if tag not in after]
    return {
        **({"tags_added": added} if added else {}),
        **({"tags_removed": removed} if removed else {}),
    }


@dataclass(frozen=True)
class FreshChange:
    """A change just committed, with what was read in the same statement (see
    `Announcer.announce_fresh`)."""

    row: ContactChangeRecord
    event: Event | None
    in_flight: Sequence[str]  # workflow ids of the contact's in-flight enrollments to tell
    may_start: bool  # some live journey may start on it (list_joined of its lists, its event)
    watched: bool  # some watched segment may take the contact in


@dataclass
class Announcement:
    signalled: int = 0
    enrollments: list[Enrollment] = field(default_factory=list)


class Announcer:
    """Tells everything that depends on a contact about its committed changes."""

    def __init__(self, sessions: SessionFactory, client: Client, options: EnrollmentOptions):
        self._sessions = sessions
        self._client = client
        self._options = options

    async def announce(self, change_id: int) -> Announcement:
        """Announce one change (see the module doc); raises when Temporal is unreachable,
        leaving the row for the relay."""
        async with self._sessions() as session:
            row = await session.get(ContactChangeRecord, change_id)
            event = await session.get(Event, row.event_id) if row and row.event_id else None
        if row is None or row.announced_at is not None:
            return Announcement()  # announced already, or the contact was erased with its changes
        return await self._announce(row, event)

    async def announce_fresh(self, fresh: FreshChange) -> Announcement:
        """Announce a change this process has just committed, with what the statement that
        recorded it read (its contact's in-flight enrollments, whether journeys may start):
        the lookups `announce` would make are skipped. Temporal being unreachable leaves the
        change to the relay, as in `announce_now`."""
        try:
            return await self._announce(
                fresh.row, fresh.event, fresh.in_flight, fresh.may_start, fresh.watched
            )
        except TEMPORAL_UNREACHABLE as err:
            logger.warning("change %s left for the relay: %s", fresh.row.id, err)
            return Announcement()

    async def _announce(
        self,
        row: ContactChangeRecord,
        event: Event | None,
        in_flight: Sequence[str] | None = None,
        may_start: bool = True,
        watched: bool = True,
    ) -> Announcement:
        assert row.id is not None
        result = Announcement()
        result.signalled = await self._tell_enrollments(row, event, in_flight)
        if may_start or row.joined_lists:
            result.enrollments += await self._start_journeys(row, event)
        entries = await observe(self._sessions, row.contact_id) if watched else []
        if entries:
            admitted = await admit(self._sessions, self._client, self._options, entries)
            if admitted.deferred:
                raise RuntimeError(f"{admitted.deferred} segment entries could not be admitted")
            result.enrollments += admitted.enrollments
        await mark_announced_together(self._sessions, [row.id])
        return result

    async def announce_now(self, change_ids: Sequence[int]) -> Announcement:
        """Announce changes just committed by this process. Temporal being unreachable is not
        the caller's failure: the change is saved and the relay announces it once the lease
        has run out, so this logs and returns what it managed."""
        total = Announcement()

        async def one(change_id: int) -> None:
            try:
                done = await self.announce(change_id)
            except TEMPORAL_UNREACHABLE as err:
                logger.warning("change %s left for the relay: %s", change_id, err)
                return
            total.signalled += done.signalled
            total.enrollments += done.enrollments

        await gather_limited(_ANNOUNCE_CONCURRENCY, one, change_ids)
        return total

    async def _tell_enrollments(
        self, row: ContactChangeRecord, event: Event | None, in_flight: Sequence[str] | None
    ) -> int:
        told, failed = 0, list[str]()
        if row.reload:
            told, failed = await tell_contact_changed(
                self._sessions,
                self._client,
                [row.contact_id],
                row.origin_enrollment_id,
                _SIGNAL_CONCURRENCY,
            )
        if event is not None:
            told += await self._tell_event(row, event, in_flight)
        if failed:
            raise RuntimeError(f"{len(failed)} enrollments could not be told; left for the relay")
        return told

    async def _tell_event(
        self, row: ContactChangeRecord, event: Event, in_flight: Sequence[str] | None
    ) -> int:
        if in_flight is not None:
            workflow_ids = list(in_flight)
        else:
            async with autocommit(self._sessions)() as session:
                query = select(col(Enrollment.workflow_id)).where(
                    col(Enrollment.contact_id) == row.contact_id,
                    col(Enrollment.status).in_(ACTIVE_ENROLLMENT_STATUSES),
                )
                if row.origin_enrollment_id is not None:
                    query = query.where(col(Enrollment.id) != row.origin_enrollment_id)
                workflow_ids = list(await session.scalars(query))
        signal = _event_signal(event)

        async def one(workflow_id: str) -> bool:
            return await signal_workflow(self._client, workflow_id, "event", signal)

        return sum(await gather_limited(_SIGNAL_CONCURRENCY, one, workflow_ids))

    async def _start_journeys(
        self, row: ContactChangeRecord, event: Event | None
    ) -> list[Enrollment]:
        wanted: list[tuple[str, str]] = []  # (journey key, cause)
        async with self._sessions() as session:
            for list_key in row.joined_lists:
                for journey in await live_journeys(session, "list_joined", list_key):
                    wanted.append((journey.key, f"list_joined:{list_key}"))
            if event is not None and event.name is not None:
                for journey in await live_journeys(session, "event", event.name):
                    if await _event_matches(session, journey, event):
                        wanted.append((journey.key, f"event:{event.name}"))
            if not wanted:
                return []
            done = set(
                await session.scalars(
                    select(col(Journey.key))
                    .join(Enrollment, col(Enrollment.journey_id) == col(Journey.id))
                    .where(col(Enrollment.change_id) == row.id)
                )
            )
        started = []
        for journey_key, cause in wanted:
            if journey_key in done:
                continue  # announced before, up to here: this journey has it
            try:
                started.append(
                    await enroll(
                        self._sessions,
                        self._client,
                        self._options,
                        journey_key,
                        row.contact_id,
                        cause=cause,
                        change_id=row.id,
                    )
                )
            except (Conflict, NotFound) as refused:  # entry rules (on the timeline), or gone
                logger.info("not enrolling %s in %s: %s", row.contact_id, journey_key, refused)
        return started

    # --- the relay ----------------------------------------------------------------------------

    async def relay_once(self, limit: int = 200) -> int:
        """Announce the changes whose lease ran out (their process died, or Temporal was away);
        how many were announced. Several workers share the work: each takes its rows with a
        lease of its own (SKIP LOCKED)."""
        async with self._sessions.begin() as session:
            due = (
                select(col(ContactChangeRecord.id))
                .where(
                    col(ContactChangeRecord.announced_at).is_(None),
                    sa.or_(
                        col(ContactChangeRecord.lease_until).is_(None),
                        col(ContactChangeRecord.lease_until) < sa.func.now(),
                    ),
                )
                .order_by(col(ContactChangeRecord.id))
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            taken = await session.scalars(
                sa.update(ContactChangeRecord)
                .where(col(ContactChangeRecord.id).in_(due.scalar_subquery()))
                .values(lease_until=sa.func.now() + LEASE)
                .returning(col(ContactChangeRecord.id))
            )
            ids = sorted(int(change_id) for change_id in taken if change_id is not None)
        # sorted: a contact's changes in the order they were made

        async def one(change_id: int) -> bool:
            try:
                await self.announce(change_id)
            except TEMPORAL_UNREACHABLE as err:
                logger.warning("change %s not announced yet: %s", change_id, err)
                return False
            return True

        return sum(await gather_limited(_RELAY_CONCURRENCY, one, ids))

    async def keep_relaying(self, every: timedelta = timedelta(seconds=1)) -> None:
        """Run `relay_once` for as long as the process lives (the worker runs it)."""
        while True:
            try:
                announced = await self.relay_once()
                if announced:
                    logger.info("announced %d contact changes left unannounced", announced)
            except Exception:  # the database may be away: try again next round
                logger.exception("change relay round failed")
            await asyncio.sleep(every.total_seconds())


def _event_signal(event: Event) -> EnrollmentEvent:
    return EnrollmentEvent(
        event_id=event.dedupe_key,
        kind="custom",
        name=event.name,
        properties=event.properties,
        occurred_at=event.occurred_at,
    )


async def _event_matches(session: AsyncSession, journey: Journey, event: Event) -> bool:
    """An event trigger's `where` properties all equal the event's."""
    version = await latest_version(session, journey)
    if version is None:
        return False
    trigger = parsed_definition(version).trigger
    if not isinstance(trigger, EventTrigger):
        return False
    return all(event.properties.get(k) == v for k, v in trigger.where.items())
