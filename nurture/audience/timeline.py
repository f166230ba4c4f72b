"""A contact's timeline: what happened to them and why, newest first, in words.

Every kind of entry comes from a `Source` in `SOURCES`: a SELECT over one table for one contact
giving the same columns (`at`, `id`, `kind`, `journey`, `step`, `reason`, `source`, `payload`),
and a function that words one of its rows. A page is the UNION ALL of the sources, each
ordered newest first and cut to the page size + 1 on its own index before the union, then
ordered again and cut.

Paging is by keyset: the order is (`at`, the source's `rank`, `id`) descending, where `rank` is
fixed per source (it also says which of two entries at the same instant came first) and `id`
is the row's id as text, unique within its source. The cursor is that triple of the last entry
shown, encoded (`encode_cursor`); `before=<cursor>` continues strictly after it, so pages never
repeat or skip an entry that existed when the first page was read.

Adding a kind of entry later is one query and one wording function, registered in `SOURCES`.
A rule that keeps a message from going out (frequency caps, quiet hours) adds its skip reason
to `MESSAGE_REASONS`; one that leaves a note (`TimelineNote`) adds its note kind to
`NOTE_KINDS` and its reason codes to `NOT_ENTERED_REASONS` or a table of its own. See
docs/timeline.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import ColumnElement, Select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from nurture.db.models import (
    ContactChangeRecord,
    Enrollment,
    EnrollmentStatus,
    EnrollmentStep,
    Event,
    Journey,
    Message,
    SendHold,
    TimelineNote,
)
from nurture.errors import Invalid

logger = logging.getLogger(__name__)

# A column or SQL expression (sqlmodel's `col()` is typed as an ORM attribute, not a column).
Expr = Any

MAX_LIMIT = 200
DEFAULT_LIMIT = 50


# --- what a page is made of ----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One row of a source's query, before wording."""

    source_name: str
    rank: int
    at: datetime
    id: str
    kind: str
    journey: str | None
    step: str | None
    reason: str | None
    source: str | None
    payload: Mapping[str, Any]

    def entry(self, summary: str, **changed: Any) -> Entry:
        """The entry for this row, with `summary` and any column `changed` (e.g. `reason`).
        Payload keys that start with `_` help the wording and are left out of `detail`."""
        values: dict[str, Any] = {
            "at": self.at,
            "kind": self.kind,
            "journey": self.journey,
            "step": self.step,
            "reason": self.reason,
            "source": self.source,
            "detail": {k: v for k, v in self.payload.items() if not k.startswith("_")},
        }
        values.update(changed)
        return Entry(summary=summary, **values)


@dataclass(frozen=True)
class Entry:
    at: datetime
    kind: str
    summary: str
    journey: str | None
    step: str | None
    reason: str | None
    source: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class TimelinePage:
    entries: list[Entry]
    next: str | None  # the cursor for the next (older) page; None on the last page


@dataclass(frozen=True)
class Rows:
    """A source's query for one contact: a SELECT of `entry_columns(...)` with its FROM, JOINs
    and WHERE, and the expressions it is filtered and ordered by."""

    statement: Select[Any]
    at: Expr
    id: Expr
    kind: Expr


@dataclass(frozen=True)
class Source:
    """One kind (or family) of timeline entries.

    `rows(contact_id, journey_key)` selects the contact's rows (only those concerning the
    journey, when a key is given); `word` turns a row into an entry; `kinds` are the entry
    kinds it can produce (for `?kinds=`); `rank` orders entries at the same instant (higher is
    newer) and must differ from every other source's."""

    name: str
    rank: int
    kinds: frozenset[str]
    rows: Callable[[uuid.UUID, str | None], Rows]
    word: Callable[[Row], Entry]


def entry_columns(
    *,
    at: Expr,
    id: Expr,
    kind: Expr,
    payload: Expr,
    journey: Expr = None,
    step: Expr = None,
    reason: Expr = None,
    source: Expr = None,
) -> list[ColumnElement[Any]]:
    """The columns every source selects, in the order the union needs."""

    def text(value: Expr) -> Expr:
        return sa.cast(value if value is not None else sa.null(), sa.Text)

    return [
        at.label("at"),
        sa.cast(id, sa.Text).label("id"),
        text(kind).label("kind"),
        text(journey).label("journey"),
        text(step).label("step"),
        text(reason).label("reason"),
        text(source).label("source"),
        payload.label("payload"),
    ]


def json_object(**values: ColumnElement[Any] | Any) -> ColumnElement[Any]:
    """`jsonb_build_object` of named columns (the names are this module's own, inlined)."""
    args: list[Any] = []
    for name, value in values.items():
        args += [sa.literal_column(f"'{name}'"), value]
    return sa.func.jsonb_build_object(*args, type_=JSONB)


def literal_text(value: str) -> ColumnElement[Any]:
    return sa.literal(value, sa.Text)


def bigint_id(column: Any) -> ColumnElement[Any]:
    """A bigint id as text that sorts like the number."""
    return sa.func.lpad(sa.cast(column, sa.Text), 20, "0")


# --- the cursor ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    at: datetime
    rank: int
    id: str


def encode_cursor(cursor: Cursor) -> str:
    raw = json.dumps([cursor.at.isoformat(), cursor.rank, cursor.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """The cursor, or `Invalid` (422) when it is not one this API gave out."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        at_text, rank, id_ = json.loads(raw)
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None or not isinstance(rank, int) or not isinstance(id_, str):
            raise ValueError
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        raise Invalid(
            "invalid cursor: pass `before` exactly as a previous page's `next` gave it",
            detail=[{"path": "query.before", "message": "not a cursor from a previous page"}],
        ) from None
    return Cursor(at, rank, id_)


def _after_cursor(rows: Rows, rank: int, cursor: Cursor) -> Expr:
    """Rows of a source of this `rank` that come after `cursor` in newest-first order."""
    if rank < cursor.rank:
        return rows.at <= cursor.at
    if rank > cursor.rank:
        return rows.at < cursor.at
    return sa.or_(
        rows.at < cursor.at,
        sa.and_(rows.at == cursor.at, rows.id.collate("C") < cursor.id),
    )


# --- reading a page ------------------------------------------------------------------------------


async def contact_timeline(
    session: AsyncSession,
    contact_id: uuid.UUID,
    *,
    limit: int = DEFAULT_LIMIT,
    before: str | None = None,
    journey: str | None = None,
    kinds: Sequence[str] | None = None,
) -> TimelinePage:
    """One page of the contact's timeline, newest first. `before` is a previous page's `next`;
    `journey` keeps what concerns that journey; `kinds` keeps those kinds of entry."""
    limit = max(1, min(limit, MAX_LIMIT))
    cursor = decode_cursor(before) if before else None
    wanted = _check_kinds(kinds)
    parts: list[Select[Any]] = []
    for source in SOURCES:
        if wanted is not None and not (wanted & source.kinds):
            continue
        rows = source.rows(contact_id, journey)
        statement = rows.statement
        if cursor is not None:
            statement = statement.where(_after_cursor(rows, source.rank, cursor))
        if wanted is not None:
            statement = statement.where(rows.kind.in_(sorted(wanted)))
        statement = (
            statement.add_columns(
                sa.literal_column(str(source.rank), sa.Integer).label("rank"),
                literal_text(source.name).label("source_name"),
            )
            .order_by(rows.at.desc(), rows.id.collate("C").desc())
            .limit(limit + 1)
        )
        part = statement.subquery()
        parts.append(sa.select(*part.c))
    if not parts:
        return TimelinePage([], None)
    union = sa.union_all(*parts).subquery("timeline")
    result = await session.execute(
        sa.select(*union.c)
        .order_by(union.c.at.desc(), union.c.rank.desc(), union.c.id.collate("C").desc())
        .limit(limit + 1)
    )
    rows_found = [
        Row(
            source_name=r.source_name,
            rank=r.rank,
            at=r.at,
            id=r.id,
            kind=r.kind,
            journey=r.journey,
            step=r.step,
            reason=r.reason,
            source=r.source,
            payload=r.payload or {},
        )
        for r in result
    ]
    shown = rows_found[:limit]
    more = len(rows_found) > limit
    last = shown[-1] if shown else None
    next_cursor = encode_cursor(Cursor(last.at, last.rank, last.id)) if more and last else None
    return TimelinePage([word(row) for row in shown], next_cursor)


def known_kinds() -> list[str]:
    return sorted(set().union(*(source.kinds for source in SOURCES)))


def _check_kinds(kinds: Sequence[str] | None) -> frozenset[str] | None:
    if not kinds:
        return None
    wanted = frozenset(k.strip() for k in kinds if k.strip())
    unknown = sorted(wanted - set(known_kinds()))
    if unknown:
        message = f"unknown kind(s) {', '.join(unknown)}; known: {', '.join(known_kinds())}"
        raise Invalid(message, detail=[{"path": "query.kinds", "message": message}])
    return wanted or None


def word(row: Row) -> Entry:
    """The row in words. A row the wording cannot read (data written by a newer version, a
    hand-edited change) still shows, with a plain summary, rather than failing the page."""
    source = _BY_NAME.get(row.source_name)
    try:
        if source is not None:
            return source.word(row)
    except Exception:
        logger.exception("could not word timeline row %s:%s", row.source_name, row.id)
    return row.entry(f"{row.kind.replace('_', ' ').capitalize()}" + _journey_suffix(row))


# --- words shared by several sources -------------------------------------------------------------


def value_words(value: Any, limit: int = 80) -> str:
    """A value as a person reads it."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if value != "" else '""'
    elif isinstance(value, int | float):
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _names(values: Any) -> list[str]:
    if isinstance(values, list | tuple):
        return [value_words(v) for v in values]
    return [value_words(values)]


def _journey_name(row: Row) -> str:
    name = row.payload.get("_journey_name") or row.journey
    return str(name) if name else "(unknown journey)"


def _journey_suffix(row: Row) -> str:
    return f" (journey {_journey_name(row)})" if row.journey else ""


def _plural(word: str, items: Sequence[str]) -> str:
    return f"{word}{'s' if len(items) > 1 else ''} {', '.join(items)}"


def cause_words(cause: str | None, attempt: bool = False) -> str | None:
    """What started (or, with `attempt`, tried to start) an enrollment, as a clause: "because
    they joined list newsletter", or "when they joined list newsletter"; None when absent.
    Causes are "api", "list_joined:<list>", "segment_entered:<segment>", "event:<name>",
    "bulk:<...>" / "audience:<...>"; another one is shown as it is."""
    if not cause:
        return None
    kind, _, rest = cause.partition(":")
    because = "when" if attempt else "because"
    if kind == "api" and not rest:
        return "asked through the API" if attempt else "through the API"
    if kind == "list_joined" and rest:
        return f"{because} they joined list {rest}"
    if kind == "segment_entered" and rest:
        return f"{because} they entered segment {rest}"
    if kind == "event" and rest:
        return f"on event {rest}" if attempt else f"because of event {rest}"
    if kind in ("bulk", "audience") and rest:
        what, _, key = rest.partition(":")
        if what in ("list", "segment") and key:
            return f"in a bulk enrollment of {what} {key}"
        return f"in a bulk enrollment of {rest}"
    return f"asked by {cause}" if attempt else f"started by {cause}"


# --- enrollments: entered, and how it ended ------------------------------------------------------


def _enrollment_rows(
    contact_id: uuid.UUID, journey: str | None, ended: bool
) -> tuple[Select[Any], Expr]:
    columns: list[Expr]
    at: Expr
    if ended:
        at = col(Enrollment.ended_at)
        kind: Expr = sa.case(
            (col(Enrollment.status) == EnrollmentStatus.NOT_ENROLLED, literal_text("not_entered")),
            else_=col(Enrollment.status),
        )
        columns = entry_columns(
            at=at,
            id=col(Enrollment.id),
            kind=kind,
            journey=col(Journey.key),
            step=sa.case(
                (col(Enrollment.status) == EnrollmentStatus.EXITED, col(Enrollment.current_step)),
                else_=sa.null(),
            ),
            reason=col(Enrollment.exit_reason),
            source=sa.case(
                (
                    col(Enrollment.status) == EnrollmentStatus.NOT_ENROLLED,
                    col(Enrollment.entered_by),
                ),
                else_=sa.null(),
            ),
            payload=json_object(
                enrollment_id=col(Enrollment.id),
                version=col(Enrollment.version),
                status=col(Enrollment.status),
                exit_reason=col(Enrollment.exit_reason),
                detail=col(Enrollment.detail),
                last_step=col(Enrollment.current_step),
                entered_by=col(Enrollment.entered_by),
                _journey_name=col(Journey.name),
                _last_step_type=_last_step_type(),
            ),
        )
    else:
        at = col(Enrollment.enrolled_at)
        kind = literal_text("entered")
        columns = entry_columns(
            at=at,
            id=col(Enrollment.id),
            kind=kind,
            journey=col(Journey.key),
            source=col(Enrollment.entered_by),
            payload=json_object(
                enrollment_id=col(Enrollment.id),
                version=col(Enrollment.version),
                status=col(Enrollment.status),
                entered_by=col(Enrollment.entered_by),
                workflow_id=col(Enrollment.workflow_id),
                experiment_group=col(Enrollment.experiment_group),
                _journey_name=col(Journey.name),
            ),
        )
    statement = (
        sa.select(*columns)
        .select_from(Enrollment)
        .join(Journey, col(Journey.id) == col(Enrollment.journey_id))
        .where(col(Enrollment.contact_id) == contact_id)
    )
    if ended:
        statement = statement.where(col(Enrollment.ended_at).is_not(None))
    else:
        statement = statement.where(col(Enrollment.status) != EnrollmentStatus.NOT_ENROLLED)
    if journey is not None:
        statement = statement.where(col(Journey.key) == journey)
    return statement, kind


def _last_step_type() -> Expr:
    """The type of the enrollment's last step (an exit step says why it left)."""
    return (
        sa.select(col(EnrollmentStep.step_type))
        .where(
            col(EnrollmentStep.enrollment_id) == col(Enrollment.id),
            col(EnrollmentStep.step_id) == col(Enrollment.current_step),
        )
        .order_by(col(EnrollmentStep.visit).desc())
        .limit(1)
        .correlate(Enrollment)
        .scalar_subquery()
    )


def entered_rows(contact_id: uuid.UUID, journey: str | None) -> Rows:
    statement, kind = _enrollment_rows(contact_id, journey, ended=False)
    return Rows(statement, col(Enrollment.enrolled_at), sa.cast(col(Enrollment.id), sa.Text), kind)


def ended_rows(contact_id: uuid.UUID, journey: str | None) -> Rows:
    statement, kind = _enrollment_rows(contact_id, journey, ended=True)
    return Rows(statement, col(Enrollment.ended_at), sa.cast(col(Enrollment.id), sa.Text), kind)


def word_entered(row: Row) -> Entry:
    version = row.payload.get("version")
    text = f"Entered journey {_journey_name(row)}" + (f" (v{version})" if version else "")
    cause = cause_words(row.payload.get("entered_by"))
    group = row.payload.get("experiment_group")  # a journey with a holdout
    text += f" in the {group} group" if group else ""
    return row.entry(text + (f" {cause}" if cause else ""))


# Why an enrollment ended early (`exit_reason`), for "Left journey X: <words>".
EXIT_REASONS: dict[str, str] = {
    "goal_met": "met its goal",
    "contact_deleted": "the contact was deleted",
    "unenrolled": "they were unenrolled",
    "cancelled": "the enrollment was cancelled in Temporal",
    "exit_step": "reached an exit step",
    "holdout": "held out (control group: sent nothing, still measured against the goal)",
}

# Why an enrollment was refused by the workflow itself (status not_enrolled).
NOT_ENROLLED_REASONS: dict[str, str] = {
    "goal_already_met": "already met its goal",
    "contact_deleted": "the contact no longer existed",
}


def word_ended(row: Row) -> Entry:
    name = _journey_name(row)
    version = row.payload.get("version")
    detail = row.payload.get("detail")
    reason = row.reason
    status = row.payload.get("status")
    if status == EnrollmentStatus.COMPLETED:
        text = f"Completed journey {name}" + (f" (v{version})" if version else "")
    elif status == EnrollmentStatus.NOT_ENROLLED:
        why = NOT_ENROLLED_REASONS.get(reason or "") or detail or reason or "refused at entry"
        text = f"Not entered in journey {name}: {why}"
        cause = cause_words(row.payload.get("entered_by"), attempt=True)
        text += f" ({cause})" if cause else ""
    elif status == EnrollmentStatus.FAILED:
        why = detail or reason
        text = f"Journey {name} failed for this contact" + (f": {why}" if why else "")
    else:
        at_exit_step = row.payload.get("_last_step_type") == "exit" and row.step
        known = EXIT_REASONS.get(reason or "")
        if at_exit_step:
            text = f"Left journey {name} at exit step {row.step}"
            if reason and reason != "exit_step":
                text += f" (reason: {reason})"
        elif known is not None:
            text = f"Left journey {name}: {known}"
        elif reason:
            text = f"Left journey {name}: {reason}"
        else:
            text = f"Left journey {name}"
        if detail:
            text += f": {detail}"
    return row.entry(text)


# --- steps ---------------------------------------------------------------------------------------


def step_rows(contact_id: uuid.UUID, journey: str | None) -> Rows:
    at = col(EnrollmentStep.entered_at)
    id_ = bigint_id(col(EnrollmentStep.id))
    kind = literal_text("step")
    statement = (
        sa.select(
            *entry_columns(
                at=at,
                id=id_,
                kind=kind,
                journey=col(Journey.key),
                step=col(EnrollmentStep.step_id),
                payload=json_object(
                    enrollment_id=col(EnrollmentStep.enrollment_id),
                    step_type=col(EnrollmentStep.step_type),
                    visit=col(EnrollmentStep.visit),
                    outcome=col(EnrollmentStep.outcome),
                    left_at=col(EnrollmentStep.left_at),
                    _journey_name=col(Journey.name),
                ),
            )
        )
        .select_from(EnrollmentStep)
        .join(Enrollment, col(Enrollment.id) == col(EnrollmentStep.enrollment_id))
        .join(Journey, col(Journey.id) == col(Enrollment.journey_id))
        .where(col(Enrollment.contact_id) == contact_id)
    )
    if journey is not None:
        statement = statement.where(col(Journey.key) == journey)
    return Rows(statement, at, id_, kind)


STEP_TYPES: dict[str, str] = {
    "send_email": "send email",
    "send_sms": "send SMS",
    "wait": "wait",
    "wait_for": "wait for",
    "branch": "branch",
    "update_contact": "update contact",
    "add_to_list": "add to list",
    "remove_from_list": "remove from list",
    "exit": "exit",
    "split": "split",
    "webhook": "webhook",
    "assign_owner": "assign owner",
    "send_push": "send push",
}

_RULE = re.compile(r"rule (\d+) matched")


def step_outcome_words(step_type: str, outcome: str | None) -> str:
    """A step's `outcome` (as the enrollment workflow writes it) in words."""
    if outcome is None:
        if step_type == "exit":
            return "left the journey here"
        if step_type == "wait":
            return "waiting"
        if step_type == "wait_for":
            return "waiting for what it waits for"
        return "in progress"
    if outcome.startswith("failed: "):
        return f"failed: {outcome.removeprefix('failed: ')}"
    if outcome.startswith("exited: "):  # the enrollment ended inside the step
        reason = outcome.removeprefix("exited: ")
        return f"left the journey here: {EXIT_REASONS.get(reason, reason)}"
    if step_type in ("send_email", "send_sms"):
        channel = "email" if step_type == "send_email" else "SMS"
        if outcome == "sent":
            return f"{channel} sent"
        if outcome.startswith("sent ("):  # held or delayed by a send rule first
            return f"{channel} sent, after being {outcome.removeprefix('sent (').rstrip(')')}"
        if outcome.startswith(("held: ", "delayed: ")):
            return f"{channel} {outcome}"
        if outcome.startswith("skipped"):
            return f"{channel} not sent (see the message)"
        if outcome.startswith("unknown"):
            return f"{channel} may or may not have been sent (see the message)"
        return outcome
    if step_type == "wait":
        if outcome == "waited":
            return "waited"
        if outcome.startswith("skipped: "):
            return f"did not wait: {outcome.removeprefix('skipped: ')}"
        if outcome.endswith(": already past, went on at once"):
            return "the time to wait for had already passed; went on at once"
        return outcome
    if step_type == "wait_for":
        if outcome == "timeout":
            return "what it waited for did not happen in time"
        if outcome.startswith("event "):
            return "what it waited for happened"
        return outcome
    if step_type == "branch":
        matched = _RULE.fullmatch(outcome)
        if matched:
            return f"took path {int(matched.group(1)) + 1} (its condition matched)"
        if outcome == "default":
            return "no condition matched: took the default path"
        return outcome
    if step_type == "split" and outcome.startswith("path "):
        return f"took path {outcome.removeprefix('path ')}"
    if step_type == "webhook" and outcome.startswith("HTTP "):
        return f"called: {outcome}"
    if outcome == "done":
        return {
            "update_contact": "updated the contact",
            "add_to_list": "added the contact to the list",
            "remove_from_list": "removed the contact from the list",
        }.get(step_type, "done")
    return outcome


def word_step(row: Row) -> Entry:
    step_type = str(row.payload.get("step_type") or "")
    outcome = row.payload.get("outcome")
    what = step_outcome_words(step_type, outcome if isinstance(outcome, str) else None)
    type_words = STEP_TYPES.get(step_type, step_type)
    visit = row.payload.get("visit")
    again = f", visit {visit}" if isinstance(visit, int) and visit > 1 else ""
    return row.entry(f"Journey {_journey_name(row)}, step {row.step} ({type_words}{again}): {what}")


# --- messages ------------------------------------------------------------------------------------


def message_rows(contact_id: uuid.UUID, journey: str | None) -> Rows:
    at = col(Message.created_at)
    id_ = sa.cast(col(Message.id), sa.Text)
    kind = literal_text("message")
    statement = (
        sa.select(
            *entry_columns(
                at=at,
                id=id_,
                kind=kind,
                journey=col(Journey.key),
                step=col(Message.step_id),
                reason=col(Message.reason),
                payload=json_object(
                    message_id=col(Message.id),
                    enrollment_id=col(Message.enrollment_id),
                    channel=col(Message.channel),
                    template=col(Message.template),
                    template_version=col(Message.template_version),
                    status=col(Message.status),
                    reason=col(Message.reason),
                    provider=col(Message.provider),
                    sent_at=col(Message.sent_at),
                    _journey_name=col(Journey.name),
                ),
            )
        )
        .select_from(Message)
        .outerjoin(Enrollment, col(Enrollment.id) == col(Message.enrollment_id))
        .outerjoin(Journey, col(Journey.id) == col(Enrollment.journey_id))
        .where(col(Message.contact_id) == contact_id)
    )
    if journey is not None:
        statement = statement.where(col(Journey.key) == journey)
    return Rows(statement, at, id_, kind)


@dataclass(frozen=True)
class Reason:
    """A message reason in words, with the stable code shown as the entry's `reason`."""

    code: str
    words: str


SUPPRESSION_WORDS: dict[str, str] = {
    "unsubscribed": "the contact unsubscribed from {channel}",
    "bounced": "the contact's {channel} address bounced, so it is suppressed",
    "complained": "the contact marked an earlier {channel} as spam, so it is suppressed",
}

# Why a message did not go out, as `activities/messaging.py` writes `messages.reason`: exact
# codes, then patterns. A new rule that skips sends (frequency cap, quiet hours) adds its
# reason here.
MESSAGE_REASONS: dict[str, Reason] = {
    "contact_deleted": Reason("contact_deleted", "the contact was deleted"),
    "no_email_address": Reason("no_email_address", "the contact has no email address"),
    "no_phone_number": Reason("no_phone_number", "the contact has no phone number"),
    "email_consent_revoked": Reason(
        "email_consent_revoked", "the contact revoked their consent to email"
    ),
    "sms_consent_revoked": Reason(
        "sms_consent_revoked", "the contact revoked their consent to SMS"
    ),
}
MESSAGE_REASON_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], Reason]]] = [
    (
        re.compile(r"in exclusion segment (.+)"),
        lambda m: Reason(
            "excluded", f"the contact is in the journey's exclusion segment '{m.group(1)}'"
        ),
    ),
    (
        re.compile(r"exclusion segment (.+) missing"),
        lambda m: Reason(
            "exclusion_segment_missing",
            f"the journey's exclusion segment '{m.group(1)}' no longer exists, so none of "
            "its messages go out",
        ),
    ),
    (
        re.compile(r"frequency cap (email|sms) (\d+)/(\w+)"),
        lambda m: Reason(
            "frequency_cap",
            f"the frequency cap of {m.group(2)} {_channel_words(m.group(1))} per "
            f"{m.group(3)} was reached, and the journey skips capped sends",
        ),
    ),
    (
        re.compile(r"expired: not sent within (\w+) \(expires_after\)"),
        lambda m: Reason(
            "expired",
            f"it was held longer than its step allows ({m.group(1)}), so it was not sent late",
        ),
    ),
    (
        re.compile(r"no (\w+) channel configured"),
        lambda m: Reason("no_channel", f"no {m.group(1)} channel is configured"),
    ),
    (
        re.compile(r"(email|sms)_(unsubscribed|bounced|complained)"),
        lambda m: Reason(
            m.group(0),
            SUPPRESSION_WORDS[m.group(2)].format(channel=_channel_words(m.group(1))),
        ),
    ),
]


def message_reason(reason: str | None) -> Reason | None:
    if reason is None:
        return None
    known = MESSAGE_REASONS.get(reason)
    if known is not None:
        return known
    for pattern, make in MESSAGE_REASON_PATTERNS:
        matched = pattern.fullmatch(reason)
        if matched:
            return make(matched)
    return Reason(reason, reason)


def _channel_words(channel: str | None) -> str:
    return "SMS" if channel == "sms" else str(channel or "message")


def _message_words(row: Row) -> str:
    """ "email 'welcome'" with its journey and step, for message and engagement entries."""
    channel = _channel_words(row.payload.get("channel"))
    template = row.payload.get("template")
    what = f"{channel} '{template}'" if template else channel
    if row.journey and row.step:
        return f"{what} (journey {_journey_name(row)}, step {row.step})"
    if row.journey:
        return f"{what} (journey {_journey_name(row)})"
    return what


def word_message(row: Row) -> Entry:
    what = _message_words(row)
    status = row.payload.get("status")
    reason = message_reason(row.reason)
    if status == "sent":
        return row.entry(f"Sent {what}")
    if status == "skipped":
        why = reason.words if reason else "no reason recorded"
        return row.entry(
            _capital(f"{what} not sent: {why}"), reason=reason.code if reason else None
        )
    if status == "failed":
        return row.entry(
            _capital(f"{what} failed: {row.reason or 'no reason recorded'}"), reason="failed"
        )
    if status == "unknown":  # the worker died during the provider call (UNCERTAIN_SENDS)
        return row.entry(
            _capital(f"{what} may or may not have been sent: the provider cannot be asked"),
            reason="unknown",
        )
    return row.entry(_capital(f"{what} being sent"))


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


# --- events: opens, clicks, custom events --------------------------------------------------------


def event_rows(contact_id: uuid.UUID, journey: str | None) -> Rows:
    at = col(Event.occurred_at)
    id_ = sa.cast(col(Event.id), sa.Text)
    kind: Expr = sa.case(
        (col(Event.kind) == "custom", literal_text("event")), else_=col(Event.kind)
    )
    statement = (
        sa.select(
            *entry_columns(
                at=at,
                id=id_,
                kind=kind,
                journey=col(Journey.key),
                step=col(Message.step_id),
                payload=json_object(
                    event_id=col(Event.id),
                    name=col(Event.name),
                    link=col(Event.link),
                    properties=col(Event.properties),
                    machine=col(Event.machine),
                    message_id=col(Event.message_id),
                    channel=col(Message.channel),
                    template=col(Message.template),
                    received_at=col(Event.received_at),
                    _journey_name=col(Journey.name),
                ),
            )
        )
        .select_from(Event)
        .outerjoin(Message, col(Message.id) == col(Event.message_id))
        .outerjoin(Enrollment, col(Enrollment.id) == col(Message.enrollment_id))
        .outerjoin(Journey, col(Journey.id) == col(Enrollment.journey_id))
        .where(col(Event.contact_id) == contact_id)
    )
    if journey is not None:
        statement = statement.where(col(Journey.key) == journey)
    return Rows(statement, at, id_, kind)


MAX_PROPERTIES_SHOWN = 5


def word_event(row: Row) -> Entry:
    machine = bool(row.payload.get("machine"))
    if row.kind == "open":
        if not row.payload.get("message_id"):
            return row.entry("Opened a message")
        if machine:
            return row.entry(
                _capital(
                    f"{_message_words(row)} opened automatically (a mail privacy proxy or "
                    "scanner, not the person)"
                )
            )
        return row.entry(f"Opened {_message_words(row)}")
    if row.kind == "click":
        link = row.payload.get("link")
        what = f"link '{link}'" if link else "a link"
        where = f" in {_message_words(row)}" if row.payload.get("message_id") else ""
        text = f"Clicked {what}{where}"
        if machine:
            text += " (automatically, by a link scanner)"
        return row.entry(text)
    name = row.payload.get("name") or "(unnamed)"
    properties = row.payload.get("properties")
    text = f"Event {name}"
    if isinstance(properties, dict) and properties:
        shown = [
            f"{k} = {value_words(v, 40)}"
            for k, v in list(properties.items())[:MAX_PROPERTIES_SHOWN]
        ]
        more = len(properties) - len(shown)
        text += f" ({', '.join(shown)}" + (f", {more} more" if more > 0 else "") + ")"
    return row.entry(text, reason=None)


# --- contact changes -----------------------------------------------------------------------------


def change_rows(contact_id: uuid.UUID, journey: str | None) -> Rows:
    at = col(ContactChangeRecord.at)
    id_ = bigint_id(col(ContactChangeRecord.id))
    kind = literal_text("change")
    source = col(ContactChangeRecord.source)
    by_journey = source.like("journey:%")
    statement = (
        sa.select(
            *entry_columns(
                at=at,
                id=id_,
                kind=kind,
                journey=sa.case((by_journey, sa.func.split_part(source, ":", 2)), else_=sa.null()),
                step=sa.case((by_journey, sa.func.split_part(source, ":", 3)), else_=sa.null()),
                source=source,
                payload=json_object(
                    change_id=col(ContactChangeRecord.id),
                    changes=col(ContactChangeRecord.changes),
                    origin_enrollment_id=col(ContactChangeRecord.origin_enrollment_id),
                ),
            )
        )
        .select_from(ContactChangeRecord)
        .where(
            col(ContactChangeRecord.contact_id) == contact_id,
            # An event alone shows once, as the event entry.
            col(ContactChangeRecord.changes).op("-")(literal_text("event"))
            != sa.cast(sa.literal("{}"), JSONB),
        )
    )
    if journey is not None:
        statement = statement.where(by_journey, sa.func.split_part(source, ":", 2) == journey)
    return Rows(statement, at, id_, kind)


def _attribute_change(name: str, label: str, pair: Any) -> str:
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        return f"{label} {name} set to {value_words(pair)}"
    before, after = pair
    if before is None:
        return f"{label} {name} set to {value_words(after)}"
    if after is None:
        return f"{label} {name} removed (was {value_words(before)})"
    return f"{label} {name} changed from {value_words(before)} to {value_words(after)}"


def _consent_change(channel: str, pair: Any) -> str:
    after = pair[1] if isinstance(pair, list | tuple) and len(pair) == 2 else pair
    name = _channel_words(channel)
    if after == "granted":
        return f"{name} consent granted"
    if after == "revoked":
        return f"{name} consent revoked"
    if after is None:
        return f"{name} consent choice cleared"
    return f"{name} consent set to {value_words(after)}"


def _suppressed_change(value: Any) -> str:
    if not isinstance(value, dict):
        return f"suppressed ({value_words(value)})"
    channel = _channel_words(value.get("channel"))
    why = value.get("reason")
    words = {
        "unsubscribed": "they unsubscribed",
        "bounced": "the address bounced",
        "complained": "they marked a message as spam",
    }.get(str(why), value_words(why))
    return f"suppressed on {channel}: {words}"


def _pairs(value: Any, each: Callable[[str, Any], str]) -> list[str]:
    if not isinstance(value, dict):
        return [value_words(value)]
    return [each(str(name), pair) for name, pair in value.items()]


# What each key of `contact_changes.changes` says, as lowercase phrases. A key not listed is
# shown as "key: value", so a newer writer never breaks the timeline.
CHANGE_KEYS: dict[str, Callable[[Any], list[str]]] = {
    "created": lambda v: ["contact created"] if v else [],
    "attributes": lambda v: _pairs(v, lambda n, p: _attribute_change(n, "", p).lstrip()),
    "attributes_set": lambda v: _pairs(v, lambda n, p: f"{n} = {value_words(p)}"),  # imports
    "fields": lambda v: _pairs(v, lambda n, p: _attribute_change(n, "field", p)),
    "fields_set": lambda v: _pairs(v, lambda n, p: f"{n} = {value_words(p)}"),
    "tags_added": lambda v: [f"{_plural('tag', _names(v))} added"] if v else [],
    "tags_removed": lambda v: [f"{_plural('tag', _names(v))} removed"] if v else [],
    "lists_joined": lambda v: [f"joined {_plural('list', _names(v))}"] if v else [],
    "lists_left": lambda v: [f"left {_plural('list', _names(v))}"] if v else [],
    "consent": lambda v: _pairs(v, _consent_change),
    "consent_set": lambda v: _pairs(v, _consent_change),  # imports, like fields_set
    "suppressed": lambda v: [_suppressed_change(v)],
    "devices_added": lambda v: [f"push {_plural('device', _names(v))} added"] if v else [],
    "devices_removed": lambda v: [f"push {_plural('device', _names(v))} removed"] if v else [],
    "event": lambda v: [
        f"event {v.get('name') if isinstance(v, dict) else value_words(v)} recorded"
    ],
    "test": lambda v: [
        "marked as a test contact"
        if isinstance(v, list) and v[-1:] == [True]
        else "no longer a test contact"
    ],
}


def change_phrases(changes: Mapping[str, Any]) -> list[str]:
    phrases: list[str] = []
    for key in CHANGE_KEYS:
        if key in changes:
            phrases += CHANGE_KEYS[key](changes[key])
    for key, value in changes.items():
        if key not in CHANGE_KEYS:
            phrases.append(f"{key}: {value_words(value)}")
    return phrases


def change_source_words(source: str | None) -> tuple[str, str]:
    """(prefix, suffix) around the phrases of a change, saying who made it."""
    if not source:
        return "", ""
    kind, _, rest = source.partition(":")
    if kind == "api":
        return "", " (API)"
    if kind == "import":
        return f"Imported (import {rest[:8]}{'…' if len(rest) > 8 else ''}): ", ""
    if kind == "journey":
        key, _, step = rest.partition(":")
        return "", f" by journey {key}" + (f", step {step}" if step else "")
    if kind == "webhook":
        return "", f" ({rest} webhook)" if rest else " (webhook)"
    if kind == "unsubscribe_link":
        return "", " (unsubscribe link)"
    if kind == "event":
        return "", " (event)"
    return "", f" ({source})"


def word_change(row: Row) -> Entry:
    changes = row.payload.get("changes")
    phrases = change_phrases(changes if isinstance(changes, dict) else {"changes": changes})
    prefix, suffix = change_source_words(row.source)
    body = ", ".join(phrases) if phrases else "no visible change"
    text = prefix + body + suffix if prefix else _capital(body) + suffix
    return row.entry(text)


# --- timeline notes: journeys not entered, and later rules ---------------------------------------


def note_rows(contact_id: uuid.UUID, journey: str | None) -> Rows:
    at = col(TimelineNote.at)
    id_ = bigint_id(col(TimelineNote.id))
    kind = col(TimelineNote.kind)
    statement = (
        sa.select(
            *entry_columns(
                at=at,
                id=id_,
                kind=kind,
                journey=col(TimelineNote.journey_key),
                reason=col(TimelineNote.reason),
                source=col(TimelineNote.source),
                payload=json_object(
                    note_id=col(TimelineNote.id),
                    detail=col(TimelineNote.detail),
                    _journey_name=col(Journey.name),
                ),
            )
        )
        .select_from(TimelineNote)
        .outerjoin(Journey, col(Journey.key) == col(TimelineNote.journey_key))
        .where(col(TimelineNote.contact_id) == contact_id)
    )
    if journey is not None:
        statement = statement.where(col(TimelineNote.journey_key) == journey)
    return Rows(statement, at, id_, kind)


def _quoted(detail: str | None, pattern: str) -> str | None:
    matched = re.search(pattern, detail or "")
    return matched.group(1) if matched else None


def _not_live(detail: str | None) -> str:
    status = _quoted(detail, r" is (\w+): nobody can enter")
    if status == "draft":
        return "the journey is still a draft"
    if status == "archived":
        return "the journey is archived"
    return "the journey is not live" + (f" ({status})" if status else "")


def _max_entries(detail: str | None) -> str:
    count = _quoted(detail, r"reached the (\d+) entr")
    if count:
        return f"they already entered it the {count} time{'s' if count != '1' else ''} allowed"
    return "they already entered it as many times as it allows"


def _excluded(detail: str | None) -> str:
    segment = _quoted(detail, r"exclusion segment '([^']+)'")
    return (
        f"they are in its exclusion segment '{segment}'"
        if segment
        else ("they are in its exclusion segment")
    )


def _exclusion_missing(detail: str | None) -> str:
    segment = _quoted(detail, r"segment '([^']+)'")
    what = f"its exclusion segment '{segment}'" if segment else "its exclusion segment"
    return f"{what} no longer exists, so nobody can enter it"


def _held_back(detail: str | None) -> str:
    share = _quoted(detail, r"the ([0-9.]+)% rollout")
    rollout = f"its {share}% rollout" if share else "its rollout"
    return f"held back by {rollout} (it admits the rest when widened)"


# Why a journey did not take the contact (`timeline_notes.reason` of kind not_entered): a
# function of the note's detail text. An unknown reason shows the detail.
NOT_ENTERED_REASONS: dict[str, Callable[[str | None], str]] = {
    "journey_not_live": _not_live,
    "no_published_version": lambda d: "the journey has no published version",
    "reentry_never": lambda d: "they were already enrolled once and it allows no re-entry",
    "max_entries": _max_entries,
    "excluded": _excluded,
    "exclusion_segment_missing": _exclusion_missing,
    "already_enrolled": lambda d: "they were still in it from an earlier entry",
    "contact_missing": lambda d: "the contact no longer existed",
    "goal_already_met": lambda d: "already met its goal",
    "test_contacts_only": lambda d: "it is open to test contacts only for now",
    "held_back": lambda d: _held_back(d),
}


def word_not_entered(row: Row) -> Entry:
    detail = row.payload.get("detail")
    detail_text = detail if isinstance(detail, str) else None
    known = NOT_ENTERED_REASONS.get(row.reason or "")
    why = known(detail_text) if known else (detail_text or row.reason or "no reason recorded")
    text = f"Not entered in journey {_journey_name(row)}: {why}"
    cause = cause_words(row.source, attempt=True)
    return row.entry(text + (f" ({cause})" if cause else ""))


# Wording of each kind of timeline note; a rule that writes notes of a new kind adds it here.
NOTE_KINDS: dict[str, Callable[[Row], Entry]] = {
    "not_entered": word_not_entered,
}


def word_note(row: Row) -> Entry:
    wording = NOTE_KINDS.get(row.kind)
    if wording is not None:
        return wording(row)
    detail = row.payload.get("detail")
    what = detail if isinstance(detail, str) and detail else row.reason
    return row.entry(_capital(f"{row.kind.replace('_', ' ')}: {what}") + _journey_suffix(row))


# --- sends held or delayed by a send rule (nurture.sending) --------------------------------------


def hold_rows(contact_id: uuid.UUID, journey: str | None) -> Rows:
    at = col(SendHold.at)
    id_ = bigint_id(col(SendHold.id))
    kind = literal_text("send_held")
    statement = (
        sa.select(
            *entry_columns(
                at=at,
                id=id_,
                kind=kind,
                journey=col(SendHold.journey_key),
                step=col(SendHold.step_id),
                reason=col(SendHold.rule),
                payload=json_object(
                    enrollment_id=col(SendHold.enrollment_id),
                    channel=col(SendHold.channel),
                    action=col(SendHold.action),
                    detail=col(SendHold.detail),
                    until=col(SendHold.until),
                    _journey_name=col(Journey.name),
                ),
            )
        )
        .select_from(SendHold)
        .outerjoin(Journey, col(Journey.key) == col(SendHold.journey_key))
        # Skips are messages (with the rule as their reason): shown there, not twice.
        .where(col(SendHold.contact_id) == contact_id, col(SendHold.action) != "skipped")
    )
    if journey is not None:
        statement = statement.where(col(SendHold.journey_key) == journey)
    return Rows(statement, at, id_, kind)


def word_hold(row: Row) -> Entry:
    channel = _channel_words(row.payload.get("channel"))
    action = row.payload.get("action") or "held"
    detail = row.payload.get("detail") or row.reason
    where = f" (journey {_journey_name(row)}, step {row.step})" if row.journey else ""
    return row.entry(f"{channel}{where} {action}: {detail}")


# --- the registry --------------------------------------------------------------------------------

# Ranks order entries at the same instant: a change may start a journey (entered), whose
# steps send messages, which get opened; the end comes last.
SOURCES: list[Source] = [
    Source("changes", 10, frozenset({"change"}), change_rows, word_change),
    Source("notes", 20, frozenset(NOTE_KINDS), note_rows, word_note),
    Source("entered", 30, frozenset({"entered"}), entered_rows, word_entered),
    Source("steps", 40, frozenset({"step"}), step_rows, word_step),
    Source("send_holds", 45, frozenset({"send_held"}), hold_rows, word_hold),
    Source("messages", 50, frozenset({"message"}), message_rows, word_message),
    Source("events", 60, frozenset({"open", "click", "event"}), event_rows, word_event),
    Source(
        "ended",
        70,
        frozenset({"completed", "exited", "not_entered", "failed"}),
        ended_rows,
        word_ended,
    ),
]
_BY_NAME = {source.name: source for source in SOURCES}
