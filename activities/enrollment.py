"""Activities that record an enrollment's progress in Postgres and read the contact.

They are short Postgres reads and writes, so the workflow runs them as local activities: no
task-queue round trip, one marker in the history. Steps that have an activity of their own (a
send, a contact or list change) record their progress inside it (`record_progress`), so a step
costs its own action and nothing more. Each is idempotent: a retry after a crash rewrites the
same rows with the same values.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nurture.audience.limits import TEMPORAL_PAYLOAD_LIMIT
from nurture.contracts import (
    ContactFacts,
    EnrollmentFinished,
    LoadContact,
    StepEntered,
    StepOutcome,
)
from nurture.db.engine import SessionFactory
from nurture.db.models import (
    ACTIVE_ENROLLMENT_STATUSES,
    Contact,
    ContactList,
    Enrollment,
    EnrollmentStatus,
    EnrollmentStep,
    ListMembership,
)
from nurture.journeys.facts import facts_of

CONTACT_TOO_LARGE = "ContactTooLarge"
# Room for the envelope around the result (the marker of a local activity, its headers).
LOADABLE_BYTES = TEMPORAL_PAYLOAD_LIMIT * 3 // 4


async def contact_facts(
    session: AsyncSession, contact_id: uuid.UUID, fields: Sequence[str] | None = None
) -> ContactFacts:
    """What conditions see of the contact; with `fields`, only those custom fields (what the
    journey reads: the rest would only grow the enrollment's history)."""
    contact = await session.get(Contact, contact_id, populate_existing=True)
    if contact is None:
        return ContactFacts(contact_id=contact_id, exists=False)
    list_keys = await session.scalars(
        select(col(ContactList.key))
        .join(ListMembership, col(ListMembership.list_id) == col(ContactList.id))
        .where(col(ListMembership.contact_id) == contact_id)
        .order_by(col(ContactList.key))
    )
    facts = facts_of(contact, list_keys)
    if fields is not None:
        wanted = set(fields)
        kept = {name: value for name, value in facts.fields.items() if name in wanted}
        facts = facts.model_copy(update={"fields": kept})
    _check_loadable(facts)
    return facts


def _check_loadable(facts: ContactFacts) -> None:
    """What an enrollment loads must fit in one Temporal payload: over the limit, the load
    would be retried forever. The size limits keep new contacts well under it
    (`nurture.audience.limits`); a contact stored before them, or in thousands of lists, is
    refused here, and the enrollment exits with reason `contact_too_large`."""
    size = len(facts.model_dump_json())
    if size > LOADABLE_BYTES:
        raise ApplicationError(
            f"the contact is {size} bytes as the journey reads it, over the {LOADABLE_BYTES} "
            "bytes an enrollment can load (Temporal's payload limit): shrink its fields",
            type=CONTACT_TOO_LARGE,
            non_retryable=True,
        )


async def record_progress(
    session: AsyncSession, enrollment_id: uuid.UUID, entered: Sequence[StepEntered]
) -> None:
    """Write the steps entered since the last write, in order: each closes the one before it
    (with its outcome), opens its own row, and becomes the enrollment's current step."""
    for step in entered:
        if step.previous is not None:
            await _close_step(session, enrollment_id, step.previous, step.at)
        await session.execute(
            insert(EnrollmentStep)
            .values(
                enrollment_id=enrollment_id,
                step_id=step.step,
                visit=step.visit,
                step_type=step.step_type,
                entered_at=step.at,
            )
            .on_conflict_do_nothing(index_elements=["enrollment_id", "step_id", "visit"])
        )
    if entered:
        last = entered[-1]
        await session.execute(
            update(Enrollment)
            .where(col(Enrollment.id) == enrollment_id)
            .where(col(Enrollment.status).in_(ACTIVE_ENROLLMENT_STATUSES))
            .values(current_step=last.step, status=EnrollmentStatus.ACTIVE, updated_at=last.at)
        )


async def _close_step(
    session: AsyncSession, enrollment_id: uuid.UUID, done: StepOutcome, at: datetime
) -> None:
    await session.execute(
        update(EnrollmentStep)
        .where(
            col(EnrollmentStep.enrollment_id) == enrollment_id,
            col(EnrollmentStep.step_id) == done.step,
            col(EnrollmentStep.visit) == done.visit,
        )
        .values(left_at=at, outcome=done.outcome)
    )


class EnrollmentActivities:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    @activity.defn
    async def load_contact(self, load: LoadContact) -> ContactFacts:
        """The contact's facts, and the mark that the enrollment has them: changes made from
        now on signal it again (`nurture.journeys.enrollments.mark_stale`)."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(Enrollment)
                .where(col(Enrollment.id) == load.enrollment_id, col(Enrollment.contact_stale))
                .values(contact_stale=False)
            )
            return await contact_facts(session, load.contact_id, load.fields)

    @activity.defn
    async def record_steps(self, entered: list[StepEntered]) -> None:
        """Record the path so far (before a wait, so the enrollment shows where it waits)."""
        if not entered:
            return
        async with self._sessions.begin() as session:
            if await session.get(Enrollment, entered[0].enrollment_id) is None:
                return  # erased with its contact (GDPR): nothing left to record
            await record_progress(session, entered[0].enrollment_id, entered)

    @activity.defn
    async def finish_enrollment(self, finished: EnrollmentFinished) -> None:
        async with self._sessions.begin() as session:
            if await session.get(Enrollment, finished.enrollment_id) is None:
                return  # erased with its contact (GDPR): nothing left to record
            await record_progress(session, finished.enrollment_id, finished.progress)
            if finished.last is not None:
                await _close_step(session, finished.enrollment_id, finished.last, finished.at)
            await session.execute(
                update(Enrollment)
                .where(col(Enrollment.id) == finished.enrollment_id)
                .values(
                    status=finished.status,
                    exit_reason=finished.reason,
                    detail=finished.detail,
                    updated_at=finished.at,
                    ended_at=finished.at,
                )
            )
