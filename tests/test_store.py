"""The store: migrations match the models, published versions are immutable, idempotency keys."""

from __future__ import annotations

import asyncio

import pytest
from alembic import command
from sqlalchemy import text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from nurture.db.engine import SessionFactory
from nurture.db.migrate import alembic_config
from nurture.db.models import JourneyVersion, Message
from tests.support import example, make_contact, publish_journey


async def test_migrations_match_the_models(database_url: str, sessions: SessionFactory) -> None:
    # Raises if autogenerate would produce a new migration: a model changed without one.
    await asyncio.to_thread(command.check, alembic_config(database_url))


async def test_a_published_version_cannot_be_modified(sessions: SessionFactory) -> None:
    await publish_journey(sessions, example("benchmark-welcome"))
    with pytest.raises(DBAPIError, match="is published and cannot be modified"):
        async with sessions.begin() as session:
            await session.execute(update(JourneyVersion).values(definition={"tampered": True}))


async def test_publishing_again_makes_a_new_version(sessions: SessionFactory) -> None:
    definition = example("benchmark-welcome")
    assert await publish_journey(sessions, definition) == 1
    definition["name"] = "Welcome, second edition"
    assert await publish_journey(sessions, definition) == 2
    async with sessions() as session:
        rows = await session.execute(
            text("SELECT version, definition->>'name' FROM journey_versions ORDER BY version")
        )
        assert rows.all() == [
            (1, "Welcome new subscribers, find the buyers"),
            (2, "Welcome, second edition"),
        ]


async def test_a_message_idempotency_key_is_unique(sessions: SessionFactory) -> None:
    contact_id = await make_contact(sessions)
    async with sessions.begin() as session:
        session.add(
            Message(idempotency_key="e:s:1", contact_id=contact_id, channel="email", template="t")
        )
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            session.add(
                Message(
                    idempotency_key="e:s:1", contact_id=contact_id, channel="email", template="t"
                )
            )
