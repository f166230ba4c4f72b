"""One way to name a contact in a URL path: `id:<uuid>`, `ext:<external id>`, or bare.

- `id:<uuid>` is Nurture's id, `ext:<external id>` is your own id; the prefix forces the
  reading.
- A bare value that parses as a UUID is looked up first as Nurture's id and, if no contact has
  that id, as an external id (Nurture's ids are random v4 uuids, so an external id that looks
  like a uuid, common in CRMs, still works). Any other bare value is an external id.

An external id may hold any character, `/` and `%` included: the client percent-encodes the
whole reference as one path segment (`a/b` -> `a%2Fb`, `100%` -> `100%25`).
The server decodes a request's path before routing, which would turn `%2F` into a segment
separator, so `ContactRefPaths` (a pure ASGI middleware) rebuilds the path of requests under
/v1/contacts/ and /v1/lists/ from the raw path, decoding everything but `%2F` and `%25`; the
dependency then decodes the segment in full.

    ContactRefDep         a route's `{ref}` path parameter, resolved to the contact's uuid
    find_contact_id       the same for a decoded reference, None when nobody matches
    parse_contact_ref     the reference itself, or 422 when it is malformed
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import unquote, unquote_to_bytes

from fastapi import Depends, Path
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import SessionDep
from nurture.db.models import Contact
from nurture.errors import Invalid, NotFound

MAX_EXTERNAL_ID = 255  # the contacts.external_id column

EXPECTED = (
    "a contact reference is id:<uuid>, ext:<external id>, or a bare external id / uuid "
    f"(an external id is 1 to {MAX_EXTERNAL_ID} characters; percent-encode the reference "
    "as one path segment, e.g. a/b as a%2Fb)"
)

REF_DESCRIPTION = (
    "The contact: `id:<uuid>` (Nurture's id), `ext:<external id>` (your own id), or a bare "
    "value. A bare value that is a UUID is Nurture's id if a contact has it, else an external "
    "id; any other bare value is an external id. Percent-encode it as one path segment: "
    "`a/b` is `a%2Fb`, `100%` is `100%25`."
)

Kind = Literal["id", "ext", "bare"]


@dataclass(frozen=True)
class ContactRef:
    """A parsed reference. `contact_id` is set for `id:` and for a bare value that parses as
    a UUID; `external_id` for `ext:` and for every bare value (a bare uuid may be either)."""

    kind: Kind
    text: str  # the value after the prefix, as given
    contact_id: uuid.UUID | None
    external_id: str | None

    def __str__(self) -> str:
        return self.text if self.kind == "bare" else f"{self.kind}:{self.text}"

    def described(self) -> str:
        """How the reference was read, for messages: 'ext:ada', 'id:…', or both readings."""
        if self.kind == "bare" and self.contact_id is not None:
            return f"{self.text!r} (neither id:{self.contact_id} nor ext:{self.text})"
        if self.kind == "bare":
            return repr(f"ext:{self.text}")
        return repr(str(self))


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _shown(ref: str) -> str:
    return repr(ref if len(ref) <= 80 else ref[:80] + "…")


def parse_contact_ref(ref: str, where: str = "path.ref") -> ContactRef:
    """Read a decoded reference. When it is malformed, `Invalid` (422) says what was expected,
    with `where` (the request location) as the problem's path."""
    if ref.startswith("id:"):
        text = ref[3:]
        contact_id = _as_uuid(text)
        if contact_id is None:
            raise _malformed(ref, "id: must be followed by a uuid", where)
        return ContactRef("id", text, contact_id, None)
    kind: Kind = "bare"
    text = ref
    if ref.startswith("ext:"):
        kind, text = "ext", ref[4:]
    if not text:
        raise _malformed(ref, "empty contact reference", where)
    if len(text) > MAX_EXTERNAL_ID:
        raise _malformed(ref, f"external id longer than {MAX_EXTERNAL_ID} characters", where)
    if "\x00" in text:
        raise _malformed(ref, "a NUL character cannot be stored", where)
    return ContactRef(kind, text, _as_uuid(text) if kind == "bare" else None, text)


def _malformed(ref: str, problem: str, where: str) -> Invalid:
    message = f"{_shown(ref)}: {problem}; {EXPECTED}"
    return Invalid(message, detail=[{"path": where, "message": message}])


async def find_contact(session: AsyncSession, ref: ContactRef) -> uuid.UUID | None:
    """The id of the contact a parsed reference names, or None."""
    if ref.contact_id is not None:
        found = await session.scalar(
            select(col(Contact.id)).where(col(Contact.id) == ref.contact_id)
        )
        if found is not None or ref.external_id is None:
            return found
    return await session.scalar(
        select(col(Contact.id)).where(col(Contact.external_id) == ref.external_id)
    )


async def find_contact_id(
    session: AsyncSession, ref: str, where: str = "path.ref"
) -> uuid.UUID | None:
    """The id of the contact a decoded reference (`id:…`, `ext:…` or bare) names, or None;
    `Invalid` when the reference is malformed (`where`: its place in the request)."""
    return await find_contact(session, parse_contact_ref(ref, where))


def decode_ref_segment(segment: str) -> str:
    """A `{ref}` path segment as routed (only `%2F` and `%25` still encoded), decoded."""
    return unquote(segment, errors="strict")


async def contact_ref_param(
    ref: Annotated[str, Path(description=REF_DESCRIPTION, examples=["ext:crm-1042"])],
) -> ContactRef:
    """The `{ref}` path parameter, decoded and parsed."""
    try:
        decoded = decode_ref_segment(ref)
    except UnicodeDecodeError:
        raise _malformed(ref, "not UTF-8 once percent-decoded", "path.ref") from None
    return parse_contact_ref(decoded)


ContactRefParam = Annotated[ContactRef, Depends(contact_ref_param)]


async def resolve_contact_ref(ref: ContactRefParam, session: SessionDep) -> uuid.UUID:
    """The `{ref}` path parameter resolved to the contact's id; 404 when nobody matches."""
    found = await find_contact(session, ref)
    if found is None:
        raise NotFound(f"no contact with reference {ref.described()}")
    return found


ContactRefDep = Annotated[uuid.UUID, Depends(resolve_contact_ref)]


# --- keeping an encoded slash inside one segment -------------------------------------------

PREFIXES = ("/v1/contacts/", "/v1/lists/")
_KEPT = re.compile(rb"(%2[Ff5])")  # %2F, %2f and %25 stay encoded


def partly_decoded(raw_path: bytes) -> str:
    """The raw path decoded except for `%2F`/`%2f` and `%25`; bytes that are not UTF-8 stay
    percent-encoded (a reference holding them is then refused with 422, not misread)."""
    pieces = _KEPT.split(raw_path)
    decoded = b"".join(
        piece.upper() if index % 2 else unquote_to_bytes(piece)
        for index, piece in enumerate(pieces)
    )
    text = decoded.decode("utf-8", errors="surrogateescape")
    return _UNDECODABLE.sub(lambda byte: f"%{ord(byte.group()) - 0xDC00:02X}", text)


_UNDECODABLE = re.compile("[\udc80-\udcff]")


class ContactRefPaths:
    """For requests under /v1/contacts/ and /v1/lists/, route on the raw path with `%2F` and
    `%25` still encoded, so a reference that holds a `/` stays one path segment.

    Only when the result decodes to the path the server gave (a raw path that agrees with it,
    no root path in between); otherwise the request is left as it came."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            raw_path = scope.get("raw_path")
            if raw_path and path.startswith(PREFIXES) and b"%" in raw_path:
                rebuilt = partly_decoded(raw_path)
                if rebuilt != path and unquote(rebuilt) == path:
                    scope = {**scope, "path": rebuilt}
        await self.app(scope, receive, send)
