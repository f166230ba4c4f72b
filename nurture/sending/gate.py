"""The decision for one send, made and claimed in the send activity's own transaction.

In order: a send held past its step's `expires_after` is skipped; a transactional send goes
(counted); quiet hours in the contact's time zone hold it until they end; frequency caps,
read and claimed under a transaction-scoped advisory lock per contact and channel, delay or
skip it (the journey's or step's `on_cap`). Two sends racing for a cap's last slot on
different workers serialize on that lock: the second counts the first's claim once the first
commits. A claim is keyed by the send's idempotency key, so a retried send never counts twice.
Without caps or quiet hours this is one read of the rules and one insert. The decision
itself (`before_caps`, `capped`) is pure: the simulation makes it over its in-memory claims.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from nurture.db.models import EnrollmentStep, SendClaim, SendHold, utcnow
from nurture.journeys.definition import check_time_zone
from nurture.journeys.durations import format_duration
from nurture.sending.caps import cap_verdict, longest_window
from nurture.sending.rules import SendRules, load_send_rules
from nurture.sending.windows import QuietHours, quiet_until

Action = Literal["send", "held", "delayed", "skipped"]


@dataclass(frozen=True)
class Verdict:
    action: Action
    rule: str | None = None  # quiet_hours | frequency_cap | expired
    words: str | None = None  # "quiet hours until 08:00 Europe/Warsaw", for the path
    until: datetime | None = None  # held or delayed: when to try again


SEND = Verdict("send")


class GatedSend(Protocol):
    """What the gate reads of a send: a `SendRequest` (email, SMS) or a `PushRequest`."""

    @property
    def idempotency_key(self) -> str: ...
    @property
    def enrollment_id(self) -> uuid.UUID: ...
    @property
    def contact_id(self) -> uuid.UUID: ...
    @property
    def journey_key(self) -> str: ...
    @property
    def step(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def visit(self) -> int: ...
    @property
    def at(self) -> datetime | None: ...
    @property
    def transactional(self) -> bool: ...
    @property
    def on_cap(self) -> Literal["delay", "skip"]: ...
    @property
    def quiet_hours(self) -> list[QuietHours] | None: ...
    @property
    def time_zone(self) -> str | None: ...
    @property
    def held_since(self) -> datetime | None: ...
    @property
    def expires_after(self) -> timedelta | None: ...


def contact_zone(contact_zone: str | None, journey_zone: str | None, rules: SendRules) -> str:
    """The contact's time zone (an IANA name), else the journey's, else the workspace's."""
    for name in (contact_zone, journey_zone):
        if name:
            try:
                return check_time_zone(name)
            except ValueError:
                continue
    return rules.time_zone


def expired(request: GatedSend, at: datetime) -> Verdict | None:
    if request.expires_after is None or request.held_since is None:
        return None
    if at < request.held_since + request.expires_after:
        return None
    limit = format_duration(request.expires_after)
    return Verdict("skipped", "expired", f"expired: not sent within {limit} (expires_after)")


def before_caps(
    request: GatedSend, at: datetime, contact_time_zone: str | None, rules: SendRules
) -> Verdict | None:
    """Expiry and quiet hours, for the instant `at` (pure): a verdict, or None to go on to the
    caps."""
    too_late = expired(request, at)
    if too_late is not None:
        return too_late
    if not request.transactional:
        windows = request.quiet_hours if request.quiet_hours is not None else rules.quiet_hours
        if windows:
            zone = contact_zone(contact_time_zone, request.time_zone, rules)
            hold = quiet_until(at, zone, windows, request.channel)
            if hold is not None:
                return Verdict("held", "quiet_hours", hold.words(at), hold.until)
    return None


def capped(
    request: GatedSend, at: datetime, rules: SendRules, claims: Sequence[datetime]
) -> Verdict | None:
    """The frequency caps over the times of the claims already made on the send's channel
    (pure): a delay or a skip, or None when the send fits (or is transactional)."""
    verdict = cap_verdict(rules.frequency_caps, request.channel, at, claims)
    if verdict is None or request.transactional:
        return None
    if request.on_cap == "skip":
        return Verdict("skipped", "frequency_cap", verdict.words())
    # Rounded up to the minute: the words never name a time before the release.
    shown = verdict.allowed_at.astimezone(UTC) + timedelta(seconds=59)
    when = f"{shown:%Y-%m-%d %H:%M} UTC"
    return Verdict(
        "delayed", "frequency_cap", f"{verdict.words()} until {when}", verdict.allowed_at
    )


def goes_unchecked(
    request: GatedSend, at: datetime, contact_time_zone: str | None, rules: SendRules
) -> bool:
    """Whether the rules let this send go at `at` with nothing to lock, count or record: not
    expired, not held by quiet hours, no frequency cap on its channel. Such a send is only
    claimed (`send_claims`), which the send activity's lean path does in its own statement;
    any other goes through `decide_and_claim` (pure, like `before_caps`)."""
    return (
        before_caps(request, at, contact_time_zone, rules) is None
        and longest_window(rules.frequency_caps, request.channel) is None
    )


async def decide_and_claim(
    session: AsyncSession, request: GatedSend, contact_time_zone: str | None
) -> Verdict:
    at = request.at or utcnow()
    too_late = expired(request, at)
    if too_late is not None:
        return too_late
    rules = await load_send_rules(session)
    held = before_caps(request, at, contact_time_zone, rules)
    if held is not None:
        return held
    window = longest_window(rules.frequency_caps, request.channel)
    if window is not None:
        await _lock(session, request.contact_id, request.channel)
        claims = await session.scalars(
            select(col(SendClaim.at)).where(
                col(SendClaim.contact_id) == request.contact_id,
                col(SendClaim.channel) == request.channel,
                col(SendClaim.at) > at - window,
                col(SendClaim.idempotency_key) != request.idempotency_key,
            )
        )
        over = capped(request, at, rules, list(claims))
        if over is not None:
            return over
    await session.execute(
        insert(SendClaim)
        .values(
            idempotency_key=request.idempotency_key,
            contact_id=request.contact_id,
            channel=request.channel,
            at=at,
            transactional=request.transactional,
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
    )
    return SEND


async def _lock(session: AsyncSession, contact_id: uuid.UUID, channel: str) -> None:
    """Held until the transaction ends: one decision at a time per contact and channel."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"send-cap:{contact_id}:{channel}"},
    )


async def record_hold(
    session: AsyncSession, request: GatedSend, verdict: Verdict, enrollment_exists: bool
) -> None:
    """Count it (`send_holds`) and, for a hold, show it on the step of the stored path."""
    assert verdict.rule is not None and verdict.words is not None
    at = request.at or utcnow()
    await session.execute(
        insert(SendHold)
        .values(
            idempotency_key=request.idempotency_key,
            contact_id=request.contact_id,
            enrollment_id=request.enrollment_id if enrollment_exists else None,
            journey_key=request.journey_key,
            step_id=request.step,
            channel=request.channel,
            rule=verdict.rule,
            action=verdict.action,
            detail=verdict.words[:255],
            at=at,
            until=verdict.until,
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key", "at", "rule"])
    )
    if enrollment_exists and verdict.action in ("held", "delayed") and request.visit:
        await session.execute(
            update(EnrollmentStep)
            .where(
                col(EnrollmentStep.enrollment_id) == request.enrollment_id,
                col(EnrollmentStep.step_id) == request.step,
                col(EnrollmentStep.visit) == request.visit,
            )
            .values(outcome=f"{verdict.action}: {verdict.words}"[:255])
        )


@dataclass(frozen=True)
class RulesMet:
    """What the send rules leave a send activity to do. `held` (held or delayed): return
    "held" now, with `reason`, `until` and `rule`. Otherwise go on: skipped by `rule` for
    `reason` when `reason` is set, else send."""

    held: bool = False
    reason: str | None = None
    until: datetime | None = None
    rule: str | None = None


async def meet_send_rules(
    session: AsyncSession,
    request: GatedSend,
    contact_time_zone: str | None,
    enrollment_exists: bool,
) -> RulesMet:
    """A new send (email, SMS, push) decided, claimed and, unless it goes, recorded
    (`record_hold`), in the send activity's transaction."""
    verdict = await decide_and_claim(session, request, contact_time_zone)
    if verdict.action != "send":
        await record_hold(session, request, verdict, enrollment_exists)
    return rules_met(verdict)


def rules_met(verdict: Verdict) -> RulesMet:
    """What a verdict leaves the send activity to do (the simulation's stand-ins read their
    verdicts through it too)."""
    if verdict.action == "send":
        return RulesMet()
    if verdict.action in ("held", "delayed"):
        return RulesMet(True, f"{verdict.action}: {verdict.words}", verdict.until, verdict.rule)
    return RulesMet(reason=verdict.words, rule=verdict.rule)


async def hold_counts(
    session: AsyncSession,
    since: datetime | None = None,
    until: datetime | None = None,
    journey: str | None = None,
) -> list[tuple[str, str, str, int]]:
    """(rule, action, channel, count) of held, delayed and skipped sends, for analytics."""
    statement = select(
        col(SendHold.rule), col(SendHold.action), col(SendHold.channel), func.count()
    ).group_by(col(SendHold.rule), col(SendHold.action), col(SendHold.channel))
    if since is not None:
        statement = statement.where(col(SendHold.at) >= since)
    if until is not None:
        statement = statement.where(col(SendHold.at) < until)
    if journey is not None:
        statement = statement.where(col(SendHold.journey_key) == journey)
    rows = await session.execute(statement.order_by(col(SendHold.rule), col(SendHold.action)))
    return [(rule, action, channel, count) for rule, action, channel, count in rows]
