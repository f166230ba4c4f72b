"""API keys: random secrets shown once, stored as SHA-256 digests.

A key is 32 random bytes, so a fast hash is enough (nothing to brute-force); a slow password
hash would only add latency to every request.

Each API process remembers the keys it authenticated for `KEY_CACHE_SECONDS`, so most requests
cost no database round trip for their key, and `last_used_at` is written at most once a minute
per key. The price: a key revoked in the database (`revoked_at`) still works for up to
`KEY_CACHE_SECONDS` in processes that used it just before.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlmodel import col, select

from nurture.db.engine import SessionFactory
from nurture.db.models import ApiKey, utcnow

PREFIX = "nrt_"
KEY_CACHE_SECONDS = 10.0
TOUCH_EVERY = timedelta(minutes=1)  # how stale last_used_at may get
_MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True)
class NewApiKey:
    key: ApiKey
    secret: str  # shown once, never stored


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_api_key(sessions: SessionFactory, name: str) -> NewApiKey:
    secret = PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, prefix=secret[:12], secret_hash=digest(secret))
    async with sessions.begin() as session:
        session.add(key)
    return NewApiKey(key=key, secret=secret)


async def authenticate(sessions: SessionFactory, secret: str) -> ApiKey | None:
    """The live key whose secret this is, or None. Lookup is by digest, so timing leaks nothing.
    Records the use, unless it was recorded less than `TOUCH_EVERY` ago."""
    async with sessions.begin() as session:
        key = await session.scalar(
            select(ApiKey).where(
                col(ApiKey.secret_hash) == digest(secret), col(ApiKey.revoked_at).is_(None)
            )
        )
        now = utcnow()
        if key is not None and (key.last_used_at is None or now - key.last_used_at > TOUCH_EVERY):
            key.last_used_at = now
        return key


@dataclass
class KeyCache:
    """Keys this process authenticated lately (by digest), each trusted for `ttl` seconds."""

    ttl: float = KEY_CACHE_SECONDS
    clock: Callable[[], float] = time.monotonic
    _keys: dict[str, tuple[ApiKey, float]] = field(default_factory=dict)

    async def authenticate(self, sessions: SessionFactory, secret: str) -> ApiKey | None:
        key_digest = digest(secret)
        cached = self._keys.get(key_digest)
        now = self.clock()
        if cached is not None and cached[1] > now:
            return cached[0]
        key = await authenticate(sessions, secret)
        if key is None:
            self._keys.pop(key_digest, None)
            return None
        if len(self._keys) >= _MAX_CACHED_KEYS:
            self._keys.clear()  # a flood of distinct keys: start over rather than grow
        self._keys[key_digest] = (key, now + self.ttl)
        return key
