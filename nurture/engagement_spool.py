"""Engagement that arrives while Postgres is away: kept in the API's local spool
(`nurture.spool`, under DATA_DIR/spool), stored once Postgres is back.

Per path (docs/operations.md says why):
- tracked clicks and the open pixel: spooled. The person gets the redirect (or the image)
  at once either way, and nobody would send the request again.
- unsubscribes (the page's button, a mail client's one-click POST): spooled, and the person
  told they are unsubscribed; applied once Postgres is back. Nobody would ask twice.
- provider webhooks: verified, then spooled, and answered 200. Not every provider retries for
  long (Twilio's status callbacks are not retried by default, and at most for seconds with
  connection overrides), so the provider's retry is not the store we rely on.
- the API's own routes (custom events, engagements, enrollments): 503 with Retry-After; the
  caller holds the request and sends it again.

Each spooled record has its dedupe key (fixed when spooled), so a replay cut short and run
again stores nothing twice; once stored, delivery to enrollments goes the usual way (signalled
now, or redelivered by the worker when Temporal is away).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from temporalio.client import Client

from nurture.audience.events import record_engagement
from nurture.audience.suppressions import suppress
from nurture.db.engine import SessionFactory, database_away
from nurture.db.models import Message, SuppressionReason, utcnow
from nurture.errors import NotFound
from nurture.journeys.enrollments import EnrollmentOptions
from nurture.spool import Spool
from nurture.webhooks.base import ProviderEvent
from nurture.webhooks.ingest import ingest

logger = logging.getLogger(__name__)

# How often a drainer tries again while Postgres is still away.
RETRY_SECONDS = 2.0


def engagement_record(
    message_id: uuid.UUID, kind: Literal["open", "click"], link: str | None, machine: bool
) -> dict[str, Any]:
    return {
        "type": "engagement",
        "dedupe_key": f"{kind}:{uuid.uuid4()}",
        "message_id": str(message_id),
        "kind": kind,
        "link": link,
        "machine": machine,
        "occurred_at": utcnow().isoformat(),
    }


def unsubscribe_record(message_id: uuid.UUID, one_click: bool) -> dict[str, Any]:
    return {"type": "unsubscribe", "message_id": str(message_id), "one_click": one_click}


def webhook_record(events: list[ProviderEvent]) -> dict[str, Any]:
    return {"type": "webhook", "events": [dataclasses.asdict(event) for event in events]}


def _provider_event(values: dict[str, Any]) -> ProviderEvent:
    message_id, occurred_at = values.get("message_id"), values.get("occurred_at")
    return ProviderEvent(
        **{
            **values,
            "message_id": uuid.UUID(message_id) if message_id else None,
            "occurred_at": datetime.fromisoformat(occurred_at) if occurred_at else None,
        }
    )


class EngagementSpool:
    """The spool of one DATA_DIR, and the task that drains it (one per process)."""

    def __init__(self, directory: Path) -> None:
        self.spool = Spool(directory)
        self._drainer: asyncio.Task[None] | None = None
        self._checked_leftovers = False

    def keep(self, record: dict[str, Any]) -> None:
        self.spool.append(record)

    def kick(
        self, sessions: SessionFactory, client: Client, options: EnrollmentOptions | None
    ) -> None:
        """Make sure a drainer runs if anything is spooled (also what an earlier process left:
        checked on the first call in this process)."""
        if self._drainer is not None and not self._drainer.done():
            return
        if self._checked_leftovers and not self.spool.pending():
            return
        self._checked_leftovers = True
        if self.spool.pending():
            self._drainer = asyncio.create_task(
                self._drain(sessions, client, options), name="engagement-spool"
            )

    async def _drain(
        self, sessions: SessionFactory, client: Client, options: EnrollmentOptions | None
    ) -> None:
        async def replay(record: dict[str, Any]) -> None:
            try:
                await _replay(record)
            except Exception as err:
                if database_away(err):
                    raise  # stop here; the file stays for the next round
                # Not an outage: this record cannot be stored (a bug). Logged, not retried
                # forever, so the records after it are not held up.
                logger.exception("spooled record dropped: %s", record)

        async def _replay(record: dict[str, Any]) -> None:
            if record.get("type") == "unsubscribe":
                await _unsubscribe(sessions, uuid.UUID(record["message_id"]), record["one_click"])
                return
            if record.get("type") == "webhook":
                events = [_provider_event(values) for values in record["events"]]
                await ingest(sessions, client, events, options)
                return
            with contextlib.suppress(NotFound):  # the message is gone (contact erased)
                await record_engagement(
                    sessions,
                    client,
                    uuid.UUID(record["message_id"]),
                    record["kind"],
                    link=record.get("link"),
                    idempotency_key=record["dedupe_key"],
                    occurred_at=datetime.fromisoformat(record["occurred_at"]),
                    machine=bool(record.get("machine")),
                    options=options,
                )

        while self.spool.pending():
            await asyncio.sleep(0)  # a round with nothing to await must still let others run
            try:
                stored = await self.spool.drain(replay)
                if stored:
                    logger.info("stored %d spooled clicks, opens and webhooks", stored)
            except Exception as err:  # Postgres still away: the files stay, try again soon
                logger.warning("spool not drained yet: %s", err)
                await asyncio.sleep(RETRY_SECONDS)


async def _unsubscribe(sessions: SessionFactory, message_id: uuid.UUID, one_click: bool) -> None:
    async with sessions.begin() as session:
        message = await session.get(Message, message_id)
        if message is None or message.contact_id is None:  # erased meanwhile
            return
        await suppress(
            session,
            message.contact_id,
            message.channel,
            SuppressionReason.UNSUBSCRIBED,
            source="one_click" if one_click else "unsubscribe_link",
            message_id=message.id,
        )


_SPOOLS: dict[Path, EngagementSpool] = {}


def engagement_spool(data_dir: Path) -> EngagementSpool:
    """The process's spool for this DATA_DIR."""
    directory = (data_dir / "spool").resolve()
    spool = _SPOOLS.get(directory)
    if spool is None:
        spool = _SPOOLS[directory] = EngagementSpool(directory)
    return spool
