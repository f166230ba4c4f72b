"""Who a journey admits while it is being launched: test contacts only, or a canary share.

The one admission rule every way in passes through (`enrollments._claim`: the API, list,
event and segment triggers, bulk and segment runs), after the journey's own entry rules, so
only contacts who would otherwise enter are held back:

- `audience = "test_only"`: only test contacts enter (the journey runs for real, with real
  sends, for them alone); everyone else is refused with reason `test_contacts_only`.
- `rollout_percent` below 100: a contact enters when its rollout bucket, a stable hash of the
  journey key and the contact id in 0..9,999, is below `percent * 100`. The same contact is in
  or out of a journey's canary every time, and widening it keeps everyone already in (a bucket
  below 20 % is below 50 % too). Others are refused with reason `held_back`. Test contacts are
  always admitted, so their owners can watch a canary from inside.

The bucket is computed in Python here and, identically, in SQL (`bucket_sql`), so a widening
run can pick the newly included contacts in the database.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from sqlalchemy import BigInteger, Integer, Text, cast, func, literal
from sqlalchemy.dialects.postgresql import BIT
from sqlalchemy.sql.elements import ColumnElement

BUCKETS = 10_000
EVERYONE = "everyone"
TEST_ONLY = "test_only"
AUDIENCES = (EVERYONE, TEST_ONLY)


def bucket(journey_key: str, contact_id: uuid.UUID) -> int:
    """The contact's rollout bucket for this journey, 0..9,999: the first 32 bits of
    sha256("<journey key>:<contact id>") modulo 10,000."""
    digest = hashlib.sha256(f"{journey_key}:{contact_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % BUCKETS


def threshold(percent: float) -> int:
    """Buckets below this are in: 20 % is buckets 0..1,999."""
    return round(max(0.0, min(100.0, percent)) * BUCKETS / 100)


def in_rollout(journey_key: str, contact_id: uuid.UUID, percent: float) -> bool:
    return bucket(journey_key, contact_id) < threshold(percent)


def bucket_sql(journey_key: str, contact_id: Any) -> ColumnElement[int]:
    """`bucket` in SQL, for a contact id column: the same number for the same contact."""
    hashed = func.sha256(
        func.convert_to(literal(f"{journey_key}:") + cast(contact_id, Text), "UTF8")
    )
    first_bytes = func.encode(func.substr(hashed, 1, 4), "hex")
    # 'x' || hex -> 32 bits -> bigint: unsigned, as int.from_bytes reads them.
    as_bits = cast(literal("x") + first_bytes, BIT(32))
    return cast(cast(as_bits, BigInteger) % BUCKETS, Integer)


def refusal(
    journey_key: str, audience: str, percent: float, contact_id: uuid.UUID, is_test: bool
) -> tuple[str, str] | None:
    """(reason, message) when the launch state keeps this contact out; None to admit it."""
    if is_test:
        return None
    if audience == TEST_ONLY:
        return (
            "test_contacts_only",
            f"journey {journey_key!r} is open to test contacts only: contact {contact_id} is "
            "not one",
        )
    if not in_rollout(journey_key, contact_id, percent):
        return (
            "held_back",
            f"held back by the {percent:g}% rollout of {journey_key!r} (bucket "
            f"{bucket(journey_key, contact_id)} of {BUCKETS}: not below {threshold(percent)})",
        )
    return None
