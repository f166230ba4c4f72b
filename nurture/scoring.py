"""Lead scoring: rules as data, the score kept in a contact field by the change path.

Rules (`scoring_rules`, managed through /v1/scoring-rules) say what earns points (negative
points take them away):

- `event`: a custom event by name (and `where` properties that must match), per event;
- `open` / `click`: an open or click of a message Nurture sent (a click optionally of one
  named `link`), per event; machine opens do not count;
- `condition`: a condition on the contact's fields and tags (the journey condition format:
  `field`, `tag`, `all`, `any`, `not`), points held for as long as it holds.

Per-event points may decay: with `decay_days`, they count for that many days, then drop out
of the score (the worker's `keep_decaying` loop takes them out and records the change).

The one place that keeps the score is `rescore`, called by `nurture.audience.changes.record`
and `record_many`: every change of a contact (API, import, journey step, webhook, event,
open or click) passes through it, in the transaction that makes the change. It adds the
points the change earns (`score_points`, one row per rule and event, so a repeat earns
nothing), re-checks the condition rules, sums the points not expired, and writes the sum into
the contact's score field (SCORE_FIELD, default `score`) as part of the same change. So the
score is a contact field like any other: conditions, goals and segments read it
(`{"type": "field", "field": "score", "op": "gte", "value": 50}`), and its change is announced
like any other, starting the `segment_entered` journeys of a segment such as `score >= 50` at
once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, ScorePoints, ScoringRule, utcnow
from nurture.journeys.conditions import Engagement, evaluate
from nurture.journeys.definition import Condition
from nurture.journeys.facts import facts_of

logger = logging.getLogger(__name__)

SCORE_FIELD = "score"  # set from settings by `configure` (API and worker)
_HELD = "held"  # source_key of a condition rule's points
_CONDITION: TypeAdapter[Condition] = TypeAdapter(Condition)
_NO_ENGAGEMENT = Engagement(events=(), latest_visit={})


def configure(score_field: str) -> None:
    global SCORE_FIELD
    SCORE_FIELD = score_field


def _event_matches(rule: ScoringRule, event: Mapping[str, Any]) -> bool:
    if rule.match.get("name") != event.get("name"):
        return False
    where = rule.match.get("where") or {}
    properties = event.get("properties") or {}
    return all(properties.get(k) == v for k, v in where.items())


def _earned(
    rule: ScoringRule, changes: Mapping[str, Any], event_id: uuid.UUID | None
) -> str | None:
    """The source key of the points this change earns from a per-event rule, if any."""
    if rule.kind == "event" and event_id is not None:
        event = changes.get("event")
        if isinstance(event, dict) and _event_matches(rule, event):
            return str(event_id)
    seen = changes.get("engagement")
    if not isinstance(seen, dict) or seen.get("kind") != rule.kind or not seen.get("event_id"):
        return None
    link = rule.match.get("link")
    if rule.kind == "open" or link is None or link == seen.get("link"):
        return str(seen["event_id"])
    return None


async def _rules(session: AsyncSession) -> list[ScoringRule]:
    return list(await session.scalars(select(ScoringRule).order_by(col(ScoringRule.key))))


async def rescore(
    session: AsyncSession,
    contact_id: uuid.UUID,
    changes: Mapping[str, Any],
    event_id: uuid.UUID | None = None,
    rules: Sequence[ScoringRule] | None = None,
) -> list[Any] | None:
    """Apply the scoring rules to one change of a contact, in the caller's transaction;
    [before, after] of the score field when it changed (the contact row is updated), else
    None. Does nothing (and reads no contact) when there are no rules."""
    if rules is None:
        rules = await _rules(session)
    if not rules:
        return None
    contact = await session.scalar(
        select(Contact)
        .where(col(Contact.id) == contact_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if contact is None:
        return None
    now = utcnow()
    facts = None
    for rule in rules:
        if rule.kind == "condition":
            facts = facts or facts_of(contact, [])
            holds = evaluate(_CONDITION.validate_python(rule.match), facts, _NO_ENGAGEMENT)
            held = await session.scalar(
                select(col(ScorePoints.id)).where(
                    col(ScorePoints.rule_id) == rule.id,
                    col(ScorePoints.contact_id) == contact_id,
                    col(ScorePoints.source_key) == _HELD,
                )
            )
            if holds and held is None:
                await session.execute(
                    insert(ScorePoints)
                    .values(
                        contact_id=contact_id,
                        rule_id=rule.id,
                        source_key=_HELD,
                        points=rule.points,
                        awarded_at=now,
                    )
                    .on_conflict_do_nothing()
                )
            elif not holds and held is not None:
                await session.execute(sa.delete(ScorePoints).where(col(ScorePoints.id) == held))
            continue
        source = _earned(rule, changes, event_id)
        if source:
            expires = now + timedelta(days=rule.decay_days) if rule.decay_days else None
            await session.execute(
                insert(ScorePoints)
                .values(
                    contact_id=contact_id,
                    rule_id=rule.id,
                    source_key=source[:255],
                    points=rule.points,
                    awarded_at=now,
                    expires_at=expires,
                )
                .on_conflict_do_nothing()
            )
    total = await session.scalar(
        select(sa.func.coalesce(sa.func.sum(col(ScorePoints.points)), 0)).where(
            col(ScorePoints.contact_id) == contact_id,
            sa.or_(col(ScorePoints.expires_at).is_(None), col(ScorePoints.expires_at) > now),
        )
    )
    score = int(total or 0)
    before = (contact.fields or {}).get(SCORE_FIELD)
    if before == score or (before is None and score == 0):
        return None  # no points ever: the field is not written (a contact without a score)
    contact.fields = {**(contact.fields or {}), SCORE_FIELD: score}
    contact.updated_at = now
    await session.flush()
    return [before, score]


def with_score(changes: Mapping[str, Any], pair: list[Any]) -> dict[str, Any]:
    """The change's description with the score's [before, after] among its fields."""
    merged = dict(changes)
    fields = dict(merged.get("fields") or {})
    fields[SCORE_FIELD] = pair
    merged["fields"] = fields
    return merged


async def wants_engagement(session: AsyncSession, kind: str) -> bool:
    """Whether a rule counts opens (or clicks): only then is an open recorded as a change."""
    found = await session.scalar(
        select(col(ScoringRule.id)).where(col(ScoringRule.kind) == kind).limit(1)
    )
    return found is not None


async def rules_in_use(session: AsyncSession) -> list[ScoringRule]:
    return await _rules(session)


# --- decay and rule changes ----------------------------------------------------------------------


async def _rescore_and_record(sessions: SessionFactory, contact_id: uuid.UUID, source: str) -> bool:
    """Rescore one contact outside any other change; the new score recorded as a change of
    its own (announced by the relay) when it moved."""
    from nurture.audience.changes import Change, record  # the change path imports this module

    async with sessions.begin() as session:
        pair = await rescore(session, contact_id, {})
        if pair is None:
            return False
        await record(session, Change(contact_id, source, with_score({}, pair)), announce_here=False)
        return True


async def decay_once(sessions: SessionFactory, limit: int = 200) -> int:
    """Take points that have expired out of their contacts' scores (recorded as changes, so
    segments and journeys see the score drop); how many contacts were looked at."""
    async with sessions.begin() as session:
        due = list(
            await session.scalars(
                sa.update(ScorePoints)
                .where(
                    col(ScorePoints.id).in_(
                        select(col(ScorePoints.id))
                        .where(
                            col(ScorePoints.expired).is_(False),
                            col(ScorePoints.expires_at) <= utcnow(),
                        )
                        .limit(limit)
                        .with_for_update(skip_locked=True)
                        .scalar_subquery()
                    )
                )
                .values(expired=True)
                .returning(col(ScorePoints.contact_id))
            )
        )
    contacts = sorted(set(due))
    for contact_id in contacts:
        await _rescore_and_record(sessions, contact_id, "scoring:decay")
    return len(contacts)


async def keep_decaying(sessions: SessionFactory, every: timedelta = timedelta(minutes=1)) -> None:
    """Run `decay_once` for as long as the process lives (the worker runs it)."""
    while True:
        try:
            done = await decay_once(sessions)
            if done:
                logger.info("decayed the scores of %d contacts", done)
        except Exception:  # the database may be away: try again next round
            logger.exception("score decay round failed")
        await asyncio.sleep(every.total_seconds())


async def rescore_all(sessions: SessionFactory, page: int = 500) -> int:
    """Rescore every contact (after a condition rule was added, changed or removed); how
    many scores changed."""
    changed = 0
    after: uuid.UUID | None = None
    while True:
        async with sessions() as session:
            query = select(col(Contact.id)).order_by(col(Contact.id)).limit(page)
            if after is not None:
                query = query.where(col(Contact.id) > after)
            ids = list(await session.scalars(query))
        if not ids:
            return changed
        for contact_id in ids:
            changed += await _rescore_and_record(sessions, contact_id, "scoring:rules")
        after = ids[-1]
