"""Enrolling and unenrolling contacts: the row first, committed, then the workflow.

Enrolling is idempotent: while an enrollment of the contact in the journey is in flight, asking
again returns it; a row whose workflow never started (Temporal was down) is started on the next
ask, and Temporal's "use existing" conflict policy makes that start safe to repeat.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from nurture.concurrency import gather_limited_outcomes
from nurture.contracts import (
    ENROLLMENT_WORKFLOW,
    EnrollmentInput,
    enrollment_workflow_id,
)
from nurture.db.engine import SessionFactory
from nurture.db.lean import autocommit, driver_connection
from nurture.db.models import (
    ACTIVE_ENROLLMENT_STATUSES,
    Enrollment,
    EnrollmentStatus,
    JourneyStatus,
    JourneyVersion,
    TimelineNote,
    utcnow,
)
from nurture.db.together import ask_together
from nurture.errors import Conflict, NotFound
from nurture.journeys import rollout
from nurture.journeys.definition import EntryRules, JourneyDefinition
from nurture.journeys.exclusion import MissingExclusionSegment, in_exclusion_segment
from nurture.journeys.experiments import experiment_group
from nurture.journeys.experiments import variants as split_variants
from nurture.journeys.ordering import in_order
from nurture.tracing import initial_search_attributes

# What reaching Temporal can fail with: an RPC error from a server that went away, the SDK's
# RuntimeError when it cannot connect at all, or our own time limit.
TEMPORAL_UNREACHABLE = (RPCError, RuntimeError, TimeoutError)
# RPC statuses that mean the server is away, not that one workflow refused.
SERVER_AWAY = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED)
# How long one start or signal may take. The SDK retries an unreachable server for about 10 s
# (its `rpc_timeout` bounds each try, not the retries), so a caller waiting on it (an API
# request, a person following a link) would wait that long for a 503: this cuts it short. A
# healthy server answers in milliseconds; what is cut short is safe to repeat (starts use
# "use existing", enrollments ignore an event they have seen).
CALL_TIME_LIMIT = 2.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrollmentOptions:
    """How enrollment workflows are started; from settings in the API and worker."""

    task_queue: str
    max_steps_per_run: int = 500
    max_history_events: int = 5_000  # a run continues as new past this (EnrollmentInput)


class EntryRefused(Conflict):
    """The journey's rules keep the contact out; `reason` is a stable code the contact's
    timeline words (see docs/timeline.md)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.contact_id: uuid.UUID | None = None  # set by the claim that refused


async def enroll(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    journey_key: str,
    contact_id: uuid.UUID,
    cause: str = "api",
    change_id: int | None = None,
) -> Enrollment:
    """Enroll a contact in the latest published version of a journey (or return the live one)."""
    enrollment, _ = await enroll_or_get(
        sessions, client, options, journey_key, contact_id, cause, change_id
    )
    return enrollment


async def enroll_or_get(
    sessions: SessionFactory,
    client: Client,
    options: EnrollmentOptions,
    journey_key: str,
    contact_id: uuid.UUID | str,
    cause: str = "api",
    change_id: int | None = None,
    eager: bool = False,
) -> tuple[Enrollment, bool]:
    """Like `enroll`, also saying whether this call created the enrollment. `contact_id` may
    be the contact's external id (a str), resolved in the same read as the rest.

    `eager` asks Temporal to hand the workflow's first task straight back to this process's
    worker (eager workflow start): only for a caller running inside the worker with the
    worker's own client, such as the bulk activity.

    `cause` says what asked ("api", "list_joined:<list>", "segment_entered:<segment>",
    "event:<name>", "audience:<list or segment>") and is kept on the enrollment; a refusal is
    written to the contact's timeline with it, and so is a trigger that finds the contact
    still in the journey (an API call asking again just gets the same enrollment back)."""
    for attempt in (1, 2):
        try:
            enrollment, version, created, paused = await _claim(
                sessions, journey_key, contact_id, cause, change_id
            )
            break
        except IntegrityError:
            # A concurrent request inserted the in-flight row first; the retry returns it.
            if attempt == 2:
                raise
        except EntryRefused as refused:
            assert refused.contact_id is not None
            await note_not_entered(sessions, refused.contact_id, journey_key, refused, cause)
            raise
    if not created and cause != "api":
        await note_not_entered(
            sessions,
            enrollment.contact_id,
            journey_key,
            EntryRefused(
                "already_enrolled", f"contact {enrollment.contact_id} is still in {journey_key!r}"
            ),
            cause,
        )
    if enrollment.status == EnrollmentStatus.PENDING:
        # New, or created earlier by a call whose start never reached Temporal: (re)start it.
        # "Use existing" makes a repeated start return the running workflow.
        await start_workflow(client, options, enrollment, journey_key, version, paused, eager)
        await _catch_up_pause(sessions, client, enrollment, paused)
    return enrollment, created


async def _catch_up_pause(
    sessions: SessionFactory, client: Client, enrollment: Enrollment, started_paused: bool
) -> None:
    """A pause or resume that committed while this workflow was starting signalled everyone
    but it; tell it now, so no contact slips past a pause. The read starts after the start
    returned, and is shared with the enrollments of this process asking at the same time
    (`nurture.db.together`)."""
    [status] = await ask_together(sessions, _journey_statuses, [enrollment.journey_id])
    paused_now = status == JourneyStatus.PAUSED
    if paused_now != started_paused:
        await signal_workflow(client, enrollment.workflow_id, "pause" if paused_now else "resume")


async def _journey_statuses(
    sessions: SessionFactory, journey_ids: list[uuid.UUID]
) -> dict[uuid.UUID, str]:
    async with driver_connection(sessions) as connection:
        rows = await connection.fetch(
            "SELECT id, status FROM journeys WHERE id = ANY($1::uuid[])", journey_ids
        )
    return {row["id"]: row["status"] for row in rows}


async def note_not_entered(
    sessions: SessionFactory,
    contact_id: uuid.UUID,
    journey_key: str,
    refused: EntryRefused,
    cause: str,
) -> None:
    """Write "not entered, and why" to the contact's timeline (its own short transaction: the
    claim that refused has rolled back)."""
    async with sessions.begin() as session:
        await session.execute(
            insert(TimelineNote).values(
                contact_id=contact_id,
                kind="not_entered",
                journey_key=journey_key[:64],
                reason=refused.reason,
                detail=refused.message,
                source=cause[:160],
            )
        )


# What the claim needs to know, in one read: the journey, whether the contact exists (by id or
# external id), the journey's latest version, the contact's in-flight enrollment in it and how
# many times it entered before; the journey's launch state (audience, rollout) and whether the
# contact is a test contact. One round trip instead of five.
_CLAIM_FACTS = """
SELECT j.id, j.status, j.audience, j.rollout_percent,
  (SELECT c.id FROM contacts c WHERE {contact}) AS contact_id,
  (SELECT c.is_test FROM contacts c WHERE {contact}) AS is_test,
  (SELECT v.id FROM journey_versions v WHERE v.journey_id = j.id
    ORDER BY v.version DESC LIMIT 1) AS version_id,
  (SELECT e.id FROM enrollments e WHERE e.journey_id = j.id AND e.contact_id = (
    SELECT c.id FROM contacts c WHERE {contact}) AND e.status IN ('pending', 'active')
    LIMIT 1) AS existing_id,
  (SELECT count(*) FROM enrollments e WHERE e.journey_id = j.id AND e.contact_id = (
    SELECT c.id FROM contacts c WHERE {contact})) AS previous
FROM journeys j WHERE j.key = $1
"""
_FACTS_BY_ID = _CLAIM_FACTS.format(contact="c.id = $2::uuid")
_FACTS_BY_EXTERNAL_ID = _CLAIM_FACTS.format(contact="c.external_id = $2::text")
# The same for the claims of several requests at once: one row per (journey key, contact) whose
# journey exists, numbered by its place in the arrays; its contact by id or by external id.
_MANY_FACTS = """
SELECT i.n, j.id, j.status, j.audience, j.rollout_percent, c.id AS contact_id, c.is_test,
  (SELECT v.id FROM journey_versions v WHERE v.journey_id = j.id
    ORDER BY v.version DESC LIMIT 1) AS version_id,
  (SELECT e.id FROM enrollments e WHERE e.journey_id = j.id AND e.contact_id = c.id
    AND e.status IN ('pending', 'active') LIMIT 1) AS existing_id,
  (SELECT count(*) FROM enrollments e WHERE e.journey_id = j.id AND e.contact_id = c.id)
    AS previous
FROM unnest($1::int[], $2::text[], $3::uuid[], $4::text[])
  AS i(n, journey_key, contact_id, external_id)
JOIN journeys j ON j.key = i.journey_key
LEFT JOIN LATERAL (
  SELECT k.id, k.is_test FROM contacts k WHERE k.id = i.contact_id
  UNION ALL
  SELECT k.id, k.is_test FROM contacts k WHERE k.external_id = i.external_id
  LIMIT 1) c ON true
"""

ClaimKey = tuple[str, uuid.UUID | str]  # a journey key and a contact (id, or external id)


async def _claim_facts(sessions: SessionFactory, keys: list[ClaimKey]) -> dict[ClaimKey, Any]:
    """`_CLAIM_FACTS` for each (journey key, contact) asked: a lone one on its own statement,
    which costs Postgres less than the arrays of one element; several in `_MANY_FACTS`."""
    async with driver_connection(sessions) as connection:
        if len(keys) == 1:
            [(journey_key, contact)] = keys
            query = _FACTS_BY_EXTERNAL_ID if isinstance(contact, str) else _FACTS_BY_ID
            row = await connection.fetchrow(query, journey_key, contact)
            return {} if row is None else {keys[0]: tuple(row)}
        rows = await connection.fetch(
            _MANY_FACTS,
            list(range(len(keys))),
            [journey_key for journey_key, _ in keys],
            [c if isinstance(c, uuid.UUID) else None for _, c in keys],
            [c if isinstance(c, str) else None for _, c in keys],
        )
    return {keys[row["n"]]: tuple(row)[1:] for row in rows}


def no_such_contact(contact: uuid.UUID | str) -> NotFound:
    """The 404 for a contact named by id, or by external id (a str), that is not there."""
    return NotFound(
        f"no contact with external id {contact!r}"
        if isinstance(contact, str)
        else f"no contact {contact}"
    )


# The claim's insert: the columns the row object sets (those it leaves out take their server
# defaults, as with an ORM insert), written out for the driver connection
# (`nurture.db.lean.driver_connection`); one statement text per set of columns, i.e. one in practice.
_JSON_COLUMNS = {
    column.name
    for column in Enrollment.__table__.columns  # type: ignore[attr-defined]
    if isinstance(column.type, sa.JSON)
}


@functools.cache
def _insert_enrollment(columns: tuple[str, ...]) -> str:
    return "INSERT INTO enrollments ({}) VALUES ({})".format(
        ", ".join(columns), ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    )


def _insert_statement(enrollment: Enrollment) -> tuple[str, list[Any]]:
    row = enrollment.model_dump()
    arguments = [json.dumps(v) if k in _JSON_COLUMNS else v for k, v in row.items()]
    return _insert_enrollment(tuple(row)), arguments


_POSTGRES = postgresql.dialect()  # type: ignore[no-untyped-call]


@functools.cache
def _insert_enrollments(columns: tuple[str, ...]) -> str:
    """Several claims' rows in one statement, an array per column; a row that would be a
    second in-flight enrollment of its contact is skipped (not in RETURNING)."""
    types = {
        column.name: column.type.compile(dialect=_POSTGRES)
        for column in Enrollment.__table__.columns  # type: ignore[attr-defined]
    }
    arrays = ", ".join(
        f"${n}::{'text' if c in _JSON_COLUMNS else types[c]}[]" for n, c in enumerate(columns, 1)
    )
    values = ", ".join(f"t.{c}::{types[c]}" if c in _JSON_COLUMNS else f"t.{c}" for c in columns)
    names = ", ".join(columns)
    return (
        f"INSERT INTO enrollments ({names}) SELECT {values} FROM unnest({arrays}) AS t({names})"
        " ON CONFLICT DO NOTHING RETURNING id"
    )


@dataclass(frozen=True, eq=False)  # each caller's own
class _Claim:
    enrollment: Enrollment


async def _insert_claims(sessions: SessionFactory, claims: list[_Claim]) -> dict[_Claim, Exception]:
    """Insert the claims' rows; for each one not inserted, what its caller raises: the
    IntegrityError `enroll_or_get` retries on when another in-flight row was there first, or
    the database's own error (a contact erased meanwhile, say). Several claims go in one
    statement; if it fails, each is tried alone, so one claim's error stays its own."""
    refused: dict[_Claim, Exception] = {}
    async with driver_connection(sessions) as connection:
        if len(claims) > 1:
            rows = [claim.enrollment.model_dump() for claim in claims]
            columns = tuple(rows[0])
            if all(tuple(row) == columns for row in rows):
                arguments = [
                    [json.dumps(row[c]) if c in _JSON_COLUMNS else row[c] for row in rows]
                    for c in columns
                ]
                try:
                    inserted = {
                        r["id"]
                        for r in await connection.fetch(_insert_enrollments(columns), *arguments)
                    }
                except asyncpg.IntegrityConstraintViolationError:
                    pass  # each alone, below
                else:
                    for claim in claims:
                        if claim.enrollment.id not in inserted:
                            refused[claim] = _in_flight_already()
                    return refused
        for claim in claims:
            statement, arguments = _insert_statement(claim.enrollment)
            try:
                await connection.execute(statement, *arguments)
            except asyncpg.UniqueViolationError:
                refused[claim] = _in_flight_already()
            except asyncpg.IntegrityConstraintViolationError as err:
                refused[claim] = err
    return refused


def _in_flight_already() -> IntegrityError:
    return IntegrityError("another in-flight enrollment", None, Exception("unique"))


async def _claim(
    sessions: SessionFactory,
    journey_key: str,
    contact: uuid.UUID | str,
    cause: str,
    change_id: int | None,
) -> tuple[Enrollment, JourneyVersion, bool, bool]:
    """The in-flight enrollment row, created and committed if needed; whether it was created
    now; whether the journey is paused (new contacts then hold before their first send).

    `contact` is the contact's id, or (a str) its external id. One read and one insert, each
    committed by itself: the read took no locks before either, and the unique index on in-flight
    enrollments is what keeps two racing claims from both inserting (IntegrityError). Each
    shares its statement with the claims of this process at the same time
    (`nurture.db.together`)."""
    [facts] = await ask_together(sessions, _claim_facts, [(journey_key, contact)])
    if facts is None:
        raise NotFound(f"no journey {journey_key!r}")
    (
        journey_id,
        journey_status,
        audience,
        rollout_percent,
        contact_id,
        is_test,
        version_id,
        existing_id,
        previous,
    ) = facts
    if contact_id is None:
        raise no_such_contact(contact)
    try:
        return await _claim_for(
            sessions,
            journey_key,
            journey_id,
            journey_status,
            contact_id,
            version_id,
            existing_id,
            int(previous or 0),
            cause,
            change_id,
            launch=(audience, float(rollout_percent), bool(is_test)),
        )
    except EntryRefused as refused:
        refused.contact_id = contact_id
        raise


async def _claim_for(
    sessions: SessionFactory,
    journey_key: str,
    journey_id: uuid.UUID,
    journey_status: str,
    contact_id: uuid.UUID,
    version_id: uuid.UUID | None,
    existing_id: uuid.UUID | None,
    previous: int,
    cause: str,
    change_id: int | None,
    launch: tuple[str, float, bool],
) -> tuple[Enrollment, JourneyVersion, bool, bool]:
    """`launch`: the journey's audience and rollout percent, and whether the contact is a
    test contact (`nurture.journeys.rollout`). Each read it makes takes a pooled connection of
    its own, one at a time; the usual path makes none besides the insert."""
    paused = journey_status == JourneyStatus.PAUSED
    if existing_id is not None:
        async with autocommit(sessions)() as session:
            existing = await session.get(Enrollment, existing_id)
            if existing is None:  # ended and erased in between: claim again
                raise IntegrityError("in-flight enrollment vanished", None, Exception())
            pinned = await cached_version(session, existing.journey_version_id)
        assert pinned is not None
        return existing, pinned, False, paused
    if journey_status not in (JourneyStatus.ACTIVE, JourneyStatus.PAUSED):
        raise EntryRefused(
            "journey_not_live",
            f"journey {journey_key!r} is {journey_status}: nobody can enter it",
        )
    version = None if version_id is None else await _version(sessions, version_id)
    if version is None:
        raise EntryRefused(
            "no_published_version", f"journey {journey_key!r} has no published version"
        )
    rules = parsed_definition(version).entry
    _check_reentry(journey_key, rules, contact_id, previous)
    if rules.exclusion_segment is not None:
        async with autocommit(sessions)() as session:
            await _check_exclusion(session, journey_key, rules, contact_id)
    # Last: only contacts the journey would otherwise take are held back by its launch.
    audience, rollout_percent, is_test = launch
    held = rollout.refusal(journey_key, audience, rollout_percent, contact_id, is_test)
    if held is not None:
        raise EntryRefused(*held)
    definition = parsed_definition(version)
    now = utcnow()
    # Every field with a default factory given: pydantic inspects the signature of each factory
    # left to it, on every row object (about 1 % of the API's CPU per enrollment, by py-spy).
    enrollment = Enrollment(
        id=uuid.uuid4(),
        enrolled_at=now,
        updated_at=now,
        journey_id=journey_id,
        journey_version_id=version.id,
        version=version.version,
        contact_id=contact_id,
        workflow_id=enrollment_workflow_id(journey_key, contact_id),
        entered_by=cause[:160],
        change_id=change_id,
        experiment_group=experiment_group(definition, contact_id),
        variants=split_variants(definition, contact_id),
    )
    # On the driver connection rather than the ORM's unit of work: the object is only read
    # afterwards. A racing claim's row makes it the IntegrityError `enroll_or_get` retries on.
    [refused] = await ask_together(sessions, _insert_claims, [_Claim(enrollment)])
    if refused is not None:
        raise refused
    return enrollment, version, True, paused


# Published versions by id. A version never changes once published (a database trigger refuses
# updates), so a process can keep them; bounded, for a long-lived API serving many journeys.
_VERSIONS: dict[uuid.UUID, JourneyVersion] = {}


async def _version(sessions: SessionFactory, version_id: uuid.UUID) -> JourneyVersion | None:
    """The published version, from this process's cache or read in a session of its own."""
    version = _VERSIONS.get(version_id)
    if version is not None:
        return version
    async with autocommit(sessions)() as session:
        return await cached_version(session, version_id)


async def cached_version(session: AsyncSession, version_id: uuid.UUID) -> JourneyVersion | None:
    version = _VERSIONS.get(version_id)
    if version is None:
        version = await session.get(JourneyVersion, version_id)
        if version is None:
            return None
        if len(_VERSIONS) >= _MAX_DEFINITIONS:
            _VERSIONS.clear()
        session.expunge(version)
        _VERSIONS[version_id] = version
    return version


async def start_workflow(
    client: Client,
    options: EnrollmentOptions,
    enrollment: Enrollment,
    journey_key: str,
    version: JourneyVersion,
    paused: bool = False,
    eager: bool = False,
) -> None:
    definition = parsed_definition(version)
    async with asyncio.timeout(CALL_TIME_LIMIT):
        await _start(client, options, enrollment, journey_key, version, definition, paused, eager)


async def _start(
    client: Client,
    options: EnrollmentOptions,
    enrollment: Enrollment,
    journey_key: str,
    version: JourneyVersion,
    definition: JourneyDefinition,
    paused: bool,
    eager: bool = False,
) -> None:
    handle = await client.start_workflow(
        ENROLLMENT_WORKFLOW,
        EnrollmentInput(
            enrollment_id=enrollment.id,
            contact_id=enrollment.contact_id,
            journey_key=journey_key,
            version=version.version,
            definition=definition,
            max_steps_per_run=options.max_steps_per_run,
            max_history_events=options.max_history_events,
            paused=paused,
            group=enrollment.experiment_group,
            variants=enrollment.variants,
        ),
        id=enrollment.workflow_id,
        task_queue=options.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary=f"{definition.name} (v{version.version}) for contact {enrollment.contact_id}",
        search_attributes=initial_search_attributes(
            str(enrollment.contact_id), journey_key, version.version
        ),
        # The server skips matching and returns the first workflow task in its answer when this
        # process's worker has a free slot; otherwise it starts the workflow as usual.
        request_eager_start=eager,
    )
    if eager:
        # The SDK keeps the server's answer on the handle; logged so that it can be checked.
        started = getattr(handle, "__temporal_eagerly_started", False)
        logger.debug("enrollment %s started eagerly: %s", enrollment.id, started)


# Parsed definitions by version id. Versions never change once published, so a process can keep
# them; bounded, for a long-lived API serving many journeys.
_DEFINITIONS: dict[uuid.UUID, JourneyDefinition] = {}
_MAX_DEFINITIONS = 1_000


def parsed_definition(version: JourneyVersion) -> JourneyDefinition:
    """The version's definition, validated once per process rather than on every enrollment."""
    parsed = _DEFINITIONS.get(version.id)
    if parsed is None:
        if len(_DEFINITIONS) >= _MAX_DEFINITIONS:
            _DEFINITIONS.clear()
        parsed = _DEFINITIONS[version.id] = JourneyDefinition.model_validate(
            in_order(version.definition, version.definition_order)
        )
    return parsed


def _check_reentry(
    journey_key: str, rules: EntryRules, contact_id: uuid.UUID, previous: int
) -> None:
    """`previous`: how many times the contact entered the journey before."""
    if previous and rules.reentry == "never":
        raise EntryRefused(
            "reentry_never",
            f"contact {contact_id} was already enrolled in {journey_key!r}, which allows no re-entry",
        )
    if rules.max_entries is not None and previous >= rules.max_entries:
        raise EntryRefused(
            "max_entries", f"contact {contact_id} reached the {rules.max_entries} entries allowed"
        )


async def _check_exclusion(
    session: AsyncSession, journey_key: str, rules: EntryRules, contact_id: uuid.UUID
) -> None:
    if rules.exclusion_segment is None:
        return
    try:
        excluded = await in_exclusion_segment(session, rules.exclusion_segment, contact_id)
    except MissingExclusionSegment as err:
        raise EntryRefused(
            "exclusion_segment_missing",
            f"{err}: nobody enters {journey_key!r} until it exists again",
        ) from err
    if excluded:
        raise EntryRefused(
            "excluded",
            f"contact {contact_id} is in {journey_key!r}'s exclusion segment "
            f"{rules.exclusion_segment!r}",
        )


async def unenroll(
    sessions: SessionFactory, client: Client, enrollment_id: uuid.UUID, reason: str = "unenrolled"
) -> Enrollment:
    """Ask an in-flight enrollment to stop; the workflow records the exit before it ends."""
    async with sessions() as session:
        enrollment = await session.get(Enrollment, enrollment_id)
    if enrollment is None:
        raise NotFound(f"no enrollment {enrollment_id}")
    if enrollment.status in ACTIVE_ENROLLMENT_STATUSES:
        handle = client.get_workflow_handle(enrollment.workflow_id)
        async with asyncio.timeout(CALL_TIME_LIMIT):
            await handle.signal("unenroll", reason)
    return enrollment


async def mark_stale(
    session: AsyncSession,
    contact_ids: Sequence[uuid.UUID],
    exclude: uuid.UUID | None = None,
) -> list[str]:
    """Mark the in-flight enrollments of these contacts as holding a stale contact; the
    workflow ids of those that were not marked already, which alone need `contact_changed`.

    A workflow told once reloads the contact before its next decision (and its `load_contact`
    clears the mark), so a contact changed a thousand times during a wait costs that workflow
    a signal per reload, not a signal per change."""
    query = (
        update(Enrollment)
        .where(
            col(Enrollment.contact_id).in_(contact_ids),
            col(Enrollment.status).in_(ACTIVE_ENROLLMENT_STATUSES),
            col(Enrollment.contact_stale).is_(False),
        )
        .values(contact_stale=True)
        .returning(col(Enrollment.workflow_id))
    )
    if exclude is not None:
        query = query.where(col(Enrollment.id) != exclude)
    return list(await session.scalars(query))


async def tell_contact_changed(
    sessions: SessionFactory,
    client: Client,
    contact_ids: Sequence[uuid.UUID],
    exclude: uuid.UUID | None = None,
    concurrency: int = 20,
) -> tuple[int, list[str]]:
    """Signal `contact_changed` to the enrollments `mark_stale` marks; how many were told,
    and the workflow ids that could not be. Those have their mark cleared again, so that the
    next announcement signals them instead of taking them for already told."""
    async with sessions.begin() as session:
        workflow_ids = await mark_stale(session, contact_ids, exclude)

    async def one(workflow_id: str) -> bool:
        return await signal_workflow(client, workflow_id, "contact_changed")

    outcomes = await gather_limited_outcomes(concurrency, one, workflow_ids)
    failed = [
        w for w, o in zip(workflow_ids, outcomes, strict=True) if isinstance(o, BaseException)
    ]
    if failed:
        async with sessions.begin() as session:
            await session.execute(
                update(Enrollment)
                .where(col(Enrollment.workflow_id).in_(failed))
                .values(contact_stale=False)
            )
    return sum(1 for o in outcomes if o is True), failed


async def erase_enrollments(sessions: SessionFactory, client: Client, contact_id: uuid.UUID) -> int:
    """Before a contact is erased: unenroll its in-flight enrollments (reason
    "contact_deleted"), terminating one that refuses the signal for a reason of its own (a
    workflow past its signal limit); raises RPCError only when Temporal is away."""
    async with sessions() as session:
        workflow_ids = list(
            await session.scalars(
                select(col(Enrollment.workflow_id)).where(
                    col(Enrollment.contact_id) == contact_id,
                    col(Enrollment.status).in_(ACTIVE_ENROLLMENT_STATUSES),
                )
            )
        )
    for workflow_id in workflow_ids:
        try:
            await signal_workflow(client, workflow_id, "unenroll", "contact_deleted")
        except RPCError as err:
            if err.status in SERVER_AWAY:
                raise
            try:
                await client.get_workflow_handle(workflow_id).terminate(
                    reason=f"contact erased; the unenroll signal was refused: {err.message}"
                )
            except RPCError as gone:
                if gone.status != RPCStatusCode.NOT_FOUND:
                    raise
    return len(workflow_ids)


async def signal_workflow(
    client: Client, workflow_id: str, signal: str, arg: object = None
) -> bool:
    """Signal a running enrollment; False if it has already ended (nothing left to tell)."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        async with asyncio.timeout(CALL_TIME_LIMIT):
            if arg is None:
                await handle.signal(signal)
            else:
                await handle.signal(signal, arg)
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        return False
    return True
