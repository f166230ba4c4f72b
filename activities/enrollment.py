"""Activities that record an enrollment's progress in Postgres and read the contact.

They are short Postgres reads and writes, so the workflow runs them as local activities: no
task-queue round trip, one marker in the history. Steps that have an activity of their own (a
send, a contact or list change) record their progress inside it
(`activities.path_rows.record_progress`), so a step costs its own action and nothing more. Each
is one statement on asyncpg's own connection, and idempotent: a retry after a crash rewrites
the same rows with the same values.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.path_rows import FINISH_STATEMENT, finish_arguments, write_progress
from nurture.audience.limits import TEMPORAL_PAYLOAD_LIMIT
from nurture.contracts import ContactFacts, EnrollmentFinished, LoadContact, StepEntered
from nurture.db.engine import SessionFactory
from nurture.db.lean import driver_connection
from nurture.db.models import Contact, ContactList, ListMembership
from nurture.db.rows import ContactRow, contact_columns
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
    return loadable(facts_of(contact, list_keys), fields)


def loadable(facts: ContactFacts, fields: Sequence[str] | None) -> ContactFacts:
    """`facts` with only the custom `fields` the journey reads (None: all), checked to fit.

    What an enrollment loads must fit in one Temporal payload: over the limit, the load
    would be retried forever. The size limits keep new contacts well under it
    (`nurture.audience.limits`); a contact stored before them, or in thousands of lists, is
    refused here, and the enrollment exits with reason `contact_too_large`."""
    if fields is not None:
        wanted = set(fields)
        kept = {name: value for name, value in facts.fields.items() if name in wanted}
        facts = facts.model_copy(update={"fields": kept})
    size = len(facts.model_dump_json())
    if size > LOADABLE_BYTES:
        raise ApplicationError(
            f"the contact is {size} bytes as the journey reads it, over the {LOADABLE_BYTES} "
            "bytes an enrollment can load (Temporal's payload limit): shrink its fields",
            type=CONTACT_TOO_LARGE,
            non_retryable=True,
        )
    return facts


# The contact as `load_contact` reads it, with its lists, and the enrollment's stale mark
# cleared ($1 the enrollment, $2 the contact); no row: the contact is gone.
_LOAD_CONTACT = f"""
WITH fresh AS (
    UPDATE enrollments SET contact_stale = false WHERE id = $1 AND contact_stale
)
SELECT {contact_columns()}, ARRAY(
    SELECT l.key FROM list_memberships m JOIN lists l ON l.id = m.list_id
    WHERE m.contact_id = $2 ORDER BY l.key
) AS lists
FROM contacts WHERE id = $2
"""


class EnrollmentActivities:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    @activity.defn
    async def load_contact(self, load: LoadContact) -> ContactFacts:
        """The contact's facts, and the mark that the enrollment has them: changes made from
        now on signal it again (`nurture.journeys.enrollments.mark_stale`). One statement."""
        async with driver_connection(self._sessions) as connection:
            row = await connection.fetchrow(_LOAD_CONTACT, load.enrollment_id, load.contact_id)
        if row is None:
            return ContactFacts(contact_id=load.contact_id, exists=False)
        return loadable(facts_of(ContactRow.of(row), row["lists"]), load.fields)

    @activity.defn
    async def record_steps(self, entered: list[StepEntered]) -> None:
        """Record the path so far (before a wait, so the enrollment shows where it waits).
        Nothing is written for an enrollment erased with its contact (GDPR)."""
        if entered:
            async with driver_connection(self._sessions) as connection:
                await write_progress(connection, entered[0].enrollment_id, entered)

    @activity.defn
    async def finish_enrollment(self, finished: EnrollmentFinished) -> None:
        """The path's last steps and the enrollment's end, in one statement (nothing for an
        enrollment erased with its contact)."""
        async with driver_connection(self._sessions) as connection:
            await connection.execute(FINISH_STATEMENT, *finish_arguments(finished))
