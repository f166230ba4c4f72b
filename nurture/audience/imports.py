"""Import contacts from a CSV file streamed in the request body.

Memory stays flat whatever the file size: the body is decoded chunk by chunk, cut into whole
lines, and parsed by the stdlib csv module one batch (~1,000 rows) at a time; each batch is
validated, upserted in its own transaction with one `INSERT ... ON CONFLICT`, and dropped.
At most one batch of rows, one partial line and the capped error list are held at once.

A batch is only ever cut between records: a quoted value may span lines, and a record is
complete once its double quotes balance (RFC 4180 doubles a quote inside a quoted value). A
stray quote that never balances (by the end of the file, or within `MAX_RECORD_CHARS`) does not
swallow what follows: its row is refused, and the lines after it are read again as rows.

Mapping of columns (header names are matched without regard to case or spaces):
external_id, email, phone, time_zone; `tags` (separated by `;`); consent_email and
consent_sms (granted | revoked); every other column is a custom field of that name (a
`fields.` prefix is dropped). Empty cells change nothing, so a partial export never erases.

Contacts are matched by external_id, else by email (exactly as written, as `GET
/v1/contacts?email=` does). An existing contact keeps what the row does not give: fields and
consent are merged, tags are added. Rows are numbered as a spreadsheet shows them: the header
is row 1.

This module only reads and writes; `nurture.audience.import_jobs` runs an import as a job: progress
row, in-flight enrollments told of the changes, journeys of the list and segments started.
"""

from __future__ import annotations

import codecs
import csv
import logging
import re
import uuid
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from nurture.audience.changes import Change, record_many
from nurture.audience.limits import SizeLimits
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, ContactList, ListMembership
from nurture.errors import Invalid, NotFound, PayloadTooLarge
from nurture.journeys.definition import check_time_zone

logger = logging.getLogger(__name__)

BATCH_ROWS = 1_000
MAX_ERRORS = 1_000  # reported in full; beyond this only counted
MAX_RECORD_CHARS = 1_000_000
# Stands for a row whose quote never closes (no CSV cell can hold a NUL: the csv module refuses).
UNBALANCED = "\x00unbalanced-quote\x00"
# The import is exempt from the API's body-size limit (settings.max_body_bytes), so it has
# its own, generous one: large enough for millions of contacts, small enough to stop a runaway.
MAX_IMPORT_BYTES = 2 * 1024**3
# The import job announces its changes in bulk once the file is read (`nurture.audience.
# import_jobs`); the relay takes over only if the job has not done so by then.
IMPORT_LEASE = timedelta(minutes=10)

STANDARD = ("external_id", "email", "phone", "time_zone", "tags", "consent_email", "consent_sms")
# The same rules as the contacts API (api/schemas/contacts.py), so an import accepts exactly
# what a PUT would.
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PHONE = re.compile(r"^\+[1-9][0-9]{1,14}$")
PHONE_PUNCTUATION = re.compile(r"[\s().-]")
MAX_TAG = 100
MAX_TAGS = 200
MAX_FIELD_NAME = 128
CONSENT = ("granted", "revoked")


@dataclass(frozen=True)
class RowError:
    row: int
    message: str


@dataclass
class ImportResult:
    rows: int = 0  # data rows read (blank lines not counted)
    imported: int = 0  # rows written; a contact given twice counts twice
    created: int = 0
    updated: int = 0
    errors: list[RowError] = field(default_factory=list)
    error_count: int = 0

    def refuse(self, row: int, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(RowError(row, message))


@dataclass
class _Row:
    """One valid row, or several rows for the same contact merged (last value wins)."""

    number: int
    external_id: str | None = None
    email: str | None = None
    phone: str | None = None
    time_zone: str | None = None
    tags: list[str] = field(default_factory=list)
    consent: dict[str, str] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    id: uuid.UUID | None = None

    def merge(self, later: _Row) -> None:
        self.number = later.number
        self.email = later.email or self.email
        self.phone = later.phone or self.phone
        self.time_zone = later.time_zone or self.time_zone
        self.tags = list(dict.fromkeys([*self.tags, *later.tags]))
        self.consent.update(later.consent)
        self.fields.update(later.fields)


@dataclass(frozen=True)
class _Columns:
    """What each column of the header means: a standard name or a custom field name."""

    names: list[tuple[str, str]]  # (kind, name): ("standard", "email") | ("field", "plan")

    @classmethod
    def of(cls, header: Sequence[str]) -> _Columns:
        problems: list[dict[str, str]] = []
        names: list[tuple[str, str]] = []
        seen: set[tuple[str, str]] = set()
        for i, raw in enumerate(header, start=1):
            cell = raw.strip()
            standard = cell.lower()
            if not cell:
                problems.append({"path": f"header.{i}", "message": "empty column name"})
                continue
            if standard in STANDARD:
                name = ("standard", standard)
            else:
                custom = cell.removeprefix("fields.")
                if not custom or len(custom) > MAX_FIELD_NAME:
                    problems.append({"path": f"header.{i}", "message": f"bad field name {cell!r}"})
                    continue
                name = ("field", custom)
            if name in seen:
                problems.append({"path": f"header.{i}", "message": f"column {cell!r} repeated"})
            seen.add(name)
            names.append(name)
        if not {("standard", "external_id"), ("standard", "email")} & seen:
            problems.append(
                {"path": "header", "message": "needs an external_id or an email column"}
            )
        if problems:
            raise Invalid("the CSV header is invalid; nothing was imported", detail=problems)
        return cls(names)

    def read(self, number: int, cells: Sequence[str], limits: SizeLimits | None = None) -> _Row:
        """A valid row, or ValueError saying what is wrong with it."""
        if len(cells) > len(self.names):
            raise ValueError(f"{len(cells)} values for {len(self.names)} columns")
        row = _Row(number)
        for (kind, name), raw in zip(self.names, cells, strict=False):
            value = raw.strip()
            if not value:
                continue  # an empty cell changes nothing
            if "\x00" in value or "\ufffd" in value:
                raise ValueError(f"{name}: not valid UTF-8 text")
            if kind == "field":
                for path, message in (limits or SizeLimits.of()).field_problems({name: value}):
                    raise ValueError(f"{path}: {message}")
                row.fields[name] = value
            else:
                _set_standard(row, name, value)
        if row.external_id is None and row.email is None:
            raise ValueError("needs an external_id or an email to match a contact")
        return row


def _set_standard(row: _Row, name: str, value: str) -> None:
    match name:
        case "external_id":
            if len(value) > 255:
                raise ValueError("external_id: over 255 characters")
            row.external_id = value
        case "email":
            if len(value) > 320 or not EMAIL.match(value):
                raise ValueError(f"email: {value!r} is not an email address")
            row.email = value
        case "phone":
            phone = PHONE_PUNCTUATION.sub("", value)
            if not PHONE.match(phone):
                raise ValueError(f"phone: {value!r} is not E.164 (e.g. +48601234567)")
            row.phone = phone
        case "time_zone":
            row.time_zone = check_time_zone(value)
        case "tags":
            tags = [tag.strip() for tag in value.split(";") if tag.strip()]
            if any(len(tag) > MAX_TAG for tag in tags) or len(tags) > MAX_TAGS:
                raise ValueError(f"tags: at most {MAX_TAGS} tags of {MAX_TAG} characters")
            row.tags = list(dict.fromkeys(tags))
        case "consent_email" | "consent_sms":
            choice = value.lower()
            if choice not in CONSENT:
                raise ValueError(f"{name}: {value!r} is not granted or revoked")
            row.consent[name.removeprefix("consent_")] = choice


class _Records:
    """Cuts decoded text into lines, grouped so that no group ends inside a quoted value."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self.partial = ""  # text after the last newline
        self.group: list[str] = []  # lines of a record whose quotes do not balance yet
        self.group_chars = 0
        self.quotes = 0

    def feed(self, chunk: bytes, final: bool = False) -> list[str]:
        """Lines of whole records, in order; each ends with its newline (but maybe the last)."""
        text = self.partial + self.decoder.decode(chunk, final=final)
        # Old Mac files end lines with a bare CR, and the csv module refuses a CR inside an
        # unquoted value: every CR, CRLF or LF ends a line. A CR at the end of the chunk waits
        # for the next one, which may start with its LF.
        held = "\r" if not final and text.endswith("\r") else ""
        text = text.removesuffix(held).replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        self.partial = "" if final else lines.pop() + held
        if len(self.partial) > MAX_RECORD_CHARS:
            raise Invalid(f"a line is over {MAX_RECORD_CHARS} characters; is this a CSV file?")
        if final and lines and not lines[-1]:
            lines.pop()  # the file ended with a newline
        complete: list[str] = []
        todo = deque(line + "\n" for line in lines)
        while True:
            while todo:
                line = todo.popleft()
                self.group.append(line)
                self.group_chars += len(line)
                self.quotes += line.count('"')
                if self.quotes % 2 == 0:
                    complete.extend(self.group)
                    self._reset()
                elif self.group_chars > MAX_RECORD_CHARS:
                    todo.extendleft(reversed(self._unbalanced(complete)))
            if not (final and self.group):
                return complete
            # A quote still open at the end of the file.
            todo.extend(self._unbalanced(complete))

    def _unbalanced(self, complete: list[str]) -> list[str]:
        """A quoted value that is never closed: its first line becomes a refused row (so the
        rest of the file is not swallowed into one value), and the lines after it are read
        again as records of their own."""
        complete.append(UNBALANCED + "\n")
        rest = self.group[1:]
        self._reset()
        return rest

    def _reset(self) -> None:
        self.group, self.group_chars, self.quotes = [], 0, 0


# Called after each batch is committed with the ids of the existing contacts it changed.
BatchWritten = Callable[[ImportResult, "Batch"], Awaitable[None]]


async def import_contacts(
    sessions: SessionFactory,
    body: AsyncIterable[bytes],
    list_key: str | None = None,
    batch_rows: int = BATCH_ROWS,
    on_batch: BatchWritten | None = None,
    source: str = "import",
) -> ImportResult:
    """Read the CSV from `body` and upsert its contacts batch by batch; see the module doc.

    A bad header refuses the whole file (422); a bad row is reported and skipped. Batches
    already written stay written if a later one fails."""
    list_id = await find_list_id(sessions, list_key) if list_key is not None else None
    limits = SizeLimits.of()
    result = ImportResult()
    records = _Records()
    columns: _Columns | None = None
    pending: list[str] = []  # lines of whole records, not yet parsed
    line_number = 1  # the spreadsheet row of the next record (the header is row 1)
    received = 0

    async def flush() -> None:
        nonlocal columns, line_number, pending
        lines, pending = pending, []
        rows: list[_Row] = []
        for cells in _parsed(lines):
            number = line_number
            line_number += 1
            if isinstance(cells, csv.Error):
                if columns is None:
                    raise Invalid(f"the CSV header cannot be read: {cells}")
                result.rows += 1
                result.refuse(number, f"the row cannot be read as CSV: {cells}")
                continue
            if columns is None:
                columns = _Columns.of(cells)
                continue
            if not cells or all(not cell.strip() for cell in cells):
                continue
            result.rows += 1
            if cells == [UNBALANCED]:
                result.refuse(
                    number, 'a quoted value is never closed (a stray "); the row was skipped'
                )
                continue
            try:
                rows.append(columns.read(number, cells, limits))
            except ValueError as bad:
                result.refuse(number, str(bad))
        if rows:
            batch = await _write(sessions, rows, list_id, list_key, result, source)
            if on_batch is not None:
                await on_batch(result, batch)
            logger.info(
                "import: %d rows read, %d created, %d updated, %d refused",
                result.rows,
                result.created,
                result.updated,
                result.error_count,
            )

    async for chunk in body:
        received += len(chunk)
        if received > MAX_IMPORT_BYTES:
            raise PayloadTooLarge(
                f"the file is over {MAX_IMPORT_BYTES} bytes; the first {result.rows} rows were "
                "imported, split the rest into smaller files"
            )
        pending.extend(records.feed(chunk))
        # Parse the header alone first, so its problems are reported before any row is read.
        if (columns is None and pending) or len(pending) >= batch_rows:
            await flush()
    pending.extend(records.feed(b"", final=True))
    await flush()
    if columns is None:
        raise Invalid("the file is empty: expected a header row, e.g. external_id,email,tags")
    return result


def _parsed(lines: list[str]) -> Iterable[list[str] | csv.Error]:
    """The records of `lines`, or the csv module's complaint about one (a value over its
    field size limit): that record is refused, the rest are read on."""
    reader = csv.reader(lines)
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield err


async def find_list_id(sessions: SessionFactory, key: str) -> uuid.UUID:
    """The id of the list an import adds contacts to; `NotFound` says to create it first."""
    async with sessions() as session:
        found = await session.scalar(select(ContactList.id).where(col(ContactList.key) == key))
    if found is None:
        raise NotFound(f"no list {key!r}: create it first (POST /v1/lists)")
    return found


def _deduplicated(rows: Iterable[_Row]) -> tuple[list[_Row], list[_Row]]:
    """Rows with an external id, and rows with only an email, each contact once: a statement
    may not update the same row twice."""
    by_id: dict[str, _Row] = {}
    by_email: dict[str, _Row] = {}
    for row in rows:
        group, key = (by_id, row.external_id) if row.external_id else (by_email, row.email)
        assert key is not None
        if key in group:
            group[key].merge(row)
        else:
            group[key] = row
    return list(by_id.values()), list(by_email.values())


@dataclass(frozen=True)
class Batch:
    """What one batch wrote: the existing contacts it updated, and its change records."""

    updated: list[uuid.UUID]
    change_ids: list[int]


async def _write(
    sessions: SessionFactory,
    rows: list[_Row],
    list_id: uuid.UUID | None,
    list_key: str | None,
    result: ImportResult,
    source: str,
) -> Batch:
    """Upsert the rows (and join the list) in one transaction, with a change record per
    contact (`nurture.audience.changes`: the import job announces them)."""
    limits = SizeLimits.of()
    keyed, by_email = _deduplicated(rows)
    # Contacts refused whole, by the key their rows were grouped by (external id, else email).
    refused = {_key(row) for row in [*keyed, *by_email] if _too_large(row, limits, result)}
    keyed = [row for row in keyed if _key(row) not in refused]
    by_email = [row for row in by_email if _key(row) not in refused]
    async with sessions.begin() as session:
        by_email, ambiguous = await _match_emails(session, by_email, result)
        ids: list[uuid.UUID] = []
        updated: list[uuid.UUID] = []
        changes: dict[uuid.UUID, dict[str, Any]] = {}
        for group, target in ((keyed, "external_id"), (by_email, "id")):
            if not group:
                continue
            for row in group:
                row.id = row.id or uuid.uuid4()  # to find the row of each contact written
            by_key = {
                (row.external_id if target == "external_id" else row.id): row for row in group
            }
            returned = list(await session.execute(_upsert(group, target, limits)))
            found = {
                external_id if target == "external_id" else contact_id
                for contact_id, external_id, _ in returned
            }
            for key, row in by_key.items():
                if key not in found:  # the stored contact with this row would be over the limit
                    refused.add(_key(row))
                    result.refuse(row.number, _contact_limit_message(limits))
            for contact_id, external_id, inserted in returned:
                ids.append(contact_id)
                if inserted:
                    result.created += 1
                else:
                    result.updated += 1
                    updated.append(contact_id)
                row = by_key[external_id if target == "external_id" else contact_id]
                changes[contact_id] = _what_was_set(row, created=bool(inserted))
        written = sum(
            1
            for row in rows
            if _key(row) not in refused and (row.external_id or row.email not in ambiguous)
        )
        joined: set[uuid.UUID] = set()
        if list_id is not None and ids:
            joined = set(
                await session.scalars(
                    insert(ListMembership)
                    .from_select(
                        ["list_id", "contact_id", "added_at"],
                        sa.select(
                            sa.literal(list_id, sa.Uuid()),
                            sa.func.unnest(sa.bindparam("ids", ids, type_=ARRAY(sa.Uuid()))),
                            sa.func.now(),
                        ),
                    )
                    .on_conflict_do_nothing()
                    .returning(col(ListMembership.contact_id))
                )
            )
        change_ids = await record_many(
            session,
            [
                Change(
                    contact_id,
                    source,
                    {**what, "lists_joined": [list_key]} if contact_id in joined else what,
                    joined_lists=[list_key] if list_key and contact_id in joined else [],
                    reload=not what.get("created", False),
                )
                for contact_id, what in changes.items()
            ],
            lease=IMPORT_LEASE,
        )
    result.imported += written
    return Batch(updated, change_ids)


def _key(row: _Row) -> str | None:
    return f"id:{row.external_id}" if row.external_id else f"email:{row.email}"


def _too_large(row: _Row, limits: SizeLimits, result: ImportResult) -> bool:
    """The row's own fields (several rows of one contact merged) over the contact limit."""
    problem = limits.contact_problem(row.fields)
    if problem is not None:
        result.refuse(row.number, f"{problem[0]}: {problem[1]}")
    return problem is not None


def _contact_limit_message(limits: SizeLimits) -> str:
    return (
        "fields: the contact's custom fields with this row's would be over the limit of "
        f"{limits.contact_bytes} bytes as JSON (settings.max_contact_bytes); the row was skipped"
    )


def _what_was_set(row: _Row, created: bool) -> dict[str, Any]:
    """For the change log: what the row gave (an import does not read the values it replaces)."""
    attributes = {
        name: value
        for name, value in (
            ("email", row.email),
            ("phone", row.phone),
            ("time_zone", row.time_zone),
        )
        if value is not None
    }
    return {
        **({"created": True} if created else {}),
        **({"attributes_set": attributes} if attributes else {}),
        **({"fields_set": row.fields} if row.fields else {}),
        **({"tags_added": row.tags} if row.tags else {}),
        **({"consent_set": row.consent} if row.consent else {}),
    }


async def _match_emails(
    session: AsyncSession, rows: list[_Row], result: ImportResult
) -> tuple[list[_Row], set[str]]:
    """Give each email-only row the id of the contact with that email, or a new id; an email
    that several contacts share is refused (which one was meant?) and returned apart."""
    if not rows:
        return rows, set()
    found: dict[str | None, list[uuid.UUID]] = {}
    matches = await session.execute(
        select(col(Contact.email), col(Contact.id))
        .where(col(Contact.email).in_([row.email for row in rows]))
        .order_by(col(Contact.created_at), col(Contact.id))
    )
    for email, contact_id in matches:
        found.setdefault(email, []).append(contact_id)
    kept: list[_Row] = []
    ambiguous: set[str] = set()
    for row in rows:
        assert row.email is not None
        existing = found.get(row.email, [])
        if len(existing) > 1:
            ambiguous.add(row.email)
            result.refuse(
                row.number,
                f"{len(existing)} contacts have the email {row.email!r}: add an external_id "
                "column to say which",
            )
            continue
        row.id = existing[0] if existing else uuid.uuid4()
        kept.append(row)
    return kept, ambiguous


def _upsert(rows: list[_Row], target: str, limits: SizeLimits) -> Any:
    """One INSERT ... SELECT FROM jsonb_to_recordset(:rows) ... ON CONFLICT for the batch.

    The whole batch is one JSON parameter, so the statement is the same for every batch and
    SQLAlchemy compiles it once; a multi-row VALUES list with ~10,000 bound parameters would
    be compiled anew for each batch (most of the import's time, measured)."""
    payload = [
        {
            "id": str(row.id or uuid.uuid4()),
            "external_id": row.external_id,
            "email": row.email,
            "phone": row.phone,
            "time_zone": row.time_zone,
            "fields": row.fields,
            "tags": row.tags,
            "consent": row.consent,
        }
        for row in rows
    ]
    source = (
        sa.func.jsonb_to_recordset(sa.bindparam("rows", payload, type_=JSONB))
        .table_valued(
            sa.column("id", sa.Uuid()),
            sa.column("external_id", sa.Text()),
            sa.column("email", sa.Text()),
            sa.column("phone", sa.Text()),
            sa.column("time_zone", sa.Text()),
            sa.column("fields", JSONB()),
            sa.column("tags", JSONB()),
            sa.column("consent", JSONB()),
        )
        .render_derived(name="r", with_types=True)
    )
    now = sa.func.now()
    # JSON array to text[] (fixed SQL text naming the derived table "r"; no values in it).
    tags = sa.literal_column("ARRAY(SELECT jsonb_array_elements_text(r.tags))", ARRAY(sa.Text()))
    names = [
        "id", "external_id", "email", "phone", "time_zone", "fields", "tags", "consent",
        "created_at", "updated_at",
    ]  # fmt: skip
    statement = insert(Contact).from_select(
        names,
        sa.select(
            source.c.id,
            source.c.external_id,
            source.c.email,
            source.c.phone,
            source.c.time_zone,
            source.c.fields,
            tags,
            source.c.consent,
            now,
            now,
        ),
    )
    new = statement.excluded
    contacts = Contact.__table__.c  # type: ignore[attr-defined]
    merged = contacts.fields.op("||")(new.fields)
    return statement.on_conflict_do_update(
        index_elements=[target],
        set_={
            # An empty cell arrives as NULL and keeps the stored value.
            "email": sa.func.coalesce(new.email, contacts.email),
            "phone": sa.func.coalesce(new.phone, contacts.phone),
            "time_zone": sa.func.coalesce(new.time_zone, contacts.time_zone),
            "fields": merged,
            "consent": contacts.consent.op("||")(new.consent),
            # Tags are added, in order, each once; fixed SQL text, no values in it.
            "tags": sa.literal_column(
                "contacts.tags || ARRAY(SELECT t FROM unnest(excluded.tags) AS t "
                "WHERE NOT t = ANY(contacts.tags))"
            ),
            "updated_at": now,
        },
        # A contact these fields would take over the size limit is left as it is (and not
        # returned: its row is refused), unless it does not grow (stored before the limit).
        where=sa.or_(
            sa.func.octet_length(sa.cast(merged, sa.Text())) <= limits.contact_bytes,
            sa.func.octet_length(sa.cast(merged, sa.Text()))
            <= sa.func.octet_length(sa.cast(contacts.fields, sa.Text())),
        ),
    ).returning(
        col(Contact.id), col(Contact.external_id), sa.literal_column("xmax = 0", sa.Boolean())
    )
