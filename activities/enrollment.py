"""Activities that record an enrollment's progress in Postgres and read the contact.

Each is idempotent: a retry after a crash rewrites the same row with the same values.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from temporalio import activity

from nurture.contracts import ContactFacts, EnrollmentFinished, StepEntered, StepOutcome
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


async def contact_facts(session: AsyncSession, contact_id: uuid.UUID) -> ContactFacts:
    contact = await session.get(Contact, contact_id, populate_existing=True)
    if contact is None:
        return ContactFacts(contact_id=contact_id, exists=False)
    list_keys = await session.scalars(
        select(col(ContactList.key))
        .join(ListMembership, col(ListMembership.list_id) == col(ContactList.id))
        .where(col(ListMembership.contact_id) == contact_id)
        .order_by(col(ContactList.key))
    )
    return facts_of(contact, list_keys)


async def _close_step(
    session: AsyncSession, enrollment_id: uuid.UUID, done: StepOutcome, at: object
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
    async def load_contact(self, contact_id: uuid.UUID) -> ContactFacts:
        async with self._sessions() as session:
            return await contact_facts(session, contact_id)

    @activity.defn
    async def record_step(self, entered: StepEntered) -> None:
        """Close the previous step, open this one, and show it as the enrollment's current step."""
        async with self._sessions.begin() as session:
            if await session.get(Enrollment, entered.enrollment_id) is None:
                return  # erased with its contact (GDPR): nothing left to record
            if entered.previous is not None:
                await _close_step(session, entered.enrollment_id, entered.previous, entered.at)
            await session.execute(
                insert(EnrollmentStep)
                .values(
                    enrollment_id=entered.enrollment_id,
                    step_id=entered.step,
                    visit=entered.visit,
                    step_type=entered.step_type,
                    entered_at=entered.at,
                )
                .on_conflict_do_nothing(index_elements=["enrollment_id", "step_id", "visit"])
            )
            await session.execute(
                update(Enrollment)
                .where(col(Enrollment.id) == entered.enrollment_id)
                .where(col(Enrollment.status).in_(ACTIVE_ENROLLMENT_STATUSES))
                .values(
                    current_step=entered.step, status=EnrollmentStatus.ACTIVE, updated_at=entered.at
                )
            )

    @activity.defn
    async def finish_enrollment(self, finished: EnrollmentFinished) -> None:
        async with self._sessions.begin() as session:
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
