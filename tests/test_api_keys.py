"""API keys are remembered per process for a few seconds (no database round trip per request),
and `last_used_at` is written at most once a minute per key."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlmodel import col

from nurture.apikeys import KeyCache, create_api_key
from nurture.db.engine import SessionFactory
from nurture.db.models import ApiKey, utcnow
from tests.support import reload


async def _revoke(sessions: SessionFactory, key: ApiKey) -> None:
    async with sessions.begin() as session:
        await session.execute(
            update(ApiKey).where(col(ApiKey.id) == key.id).values(revoked_at=utcnow())
        )


async def test_a_key_is_trusted_for_the_cache_time_then_checked_again(
    sessions: SessionFactory,
) -> None:
    now = [1000.0]
    cache = KeyCache(ttl=10, clock=lambda: now[0])
    new = await create_api_key(sessions, "ci")

    first = await cache.authenticate(sessions, new.secret)
    await _revoke(sessions, new.key)
    now[0] += 9
    within = await cache.authenticate(sessions, new.secret)
    now[0] += 2
    after = await cache.authenticate(sessions, new.secret)
    wrong = await cache.authenticate(sessions, new.secret + "x")

    assert first is not None and within is not None and first.id == within.id == new.key.id
    assert after is None  # revoked: refused once the cached answer expired
    assert wrong is None


async def test_last_used_is_written_at_most_once_a_minute(sessions: SessionFactory) -> None:
    new = await create_api_key(sessions, "ci")
    cache = KeyCache(ttl=0)  # no caching: every call reads the key

    await cache.authenticate(sessions, new.secret)
    first_use = (await reload(sessions, ApiKey, new.key.id)).last_used_at
    await cache.authenticate(sessions, new.secret)
    unchanged = (await reload(sessions, ApiKey, new.key.id)).last_used_at
    async with sessions.begin() as session:  # as if the last use were two minutes ago
        await session.execute(
            update(ApiKey)
            .where(col(ApiKey.id) == new.key.id)
            .values(last_used_at=first_use - timedelta(minutes=2))
        )
    await cache.authenticate(sessions, new.secret)
    touched = (await reload(sessions, ApiKey, new.key.id)).last_used_at

    assert first_use is not None
    assert unchanged == first_use
    assert touched > first_use
