"""API keys: random secrets shown once, stored as SHA-256 digests.

A key is 32 random bytes, so a fast hash is enough (nothing to brute-force); a slow password
hash would only add latency to every request.

Each API process remembers the keys it authenticated for `KEY_CACHE_SECONDS`, so most requests
cost no database round trip for their key, and `last_used_at` is written at most once a minute
per key. The price: a key revoked in the database (`revoked_at`) still works for up to
`KEY_CACHE_SECONDS` in processes that used it just before. The process that revokes a key
through the API forgets it at once (`KeyCache.forget`); `nurture api-key revoke` is another
process, so API processes refuse the key within `KEY_CACHE_SECONDS`.

Keys are revoked, never deleted: the row stays, listed with its `revoked_at`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from nurture.db.engine import SessionFactory
from nurture.db.models import ApiKey, utcnow
from nurture.errors import Conflict, NotFound

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


@dataclass(frozen=True)
class Revoked:
    key: ApiKey
    newly: bool  # False: it had been revoked before (revoked_at is that first time)


async def list_api_keys(sessions: SessionFactory) -> list[ApiKey]:
    """Every key, revoked ones too, oldest first."""
    async with sessions() as session:
        rows = await session.scalars(
            select(ApiKey).order_by(col(ApiKey.created_at), col(ApiKey.id))
        )
        return list(rows.all())


async def revoke_api_key(
    sessions: SessionFactory, ref: str | uuid.UUID, keep: uuid.UUID | None = None
) -> Revoked:
    """Revoke the key whose id or prefix (`nrt_` and 8 characters) `ref` is. Revoking a revoked
    key changes nothing. `keep`: a key that must not be revoked this way (Conflict), the one
    making an API request. NotFound, or Conflict for a prefix two keys share (use the id)."""
    async with sessions.begin() as session:
        key = await _find(session, ref)
        if keep is not None and key.id == keep:
            raise Conflict(
                "an API key cannot revoke itself: use another key, or `nurture api-key revoke`"
            )
        if key.revoked_at is not None:
            return Revoked(key, newly=False)
        key.revoked_at = utcnow()
    return Revoked(key, newly=True)


async def _find(session: AsyncSession, ref: str | uuid.UUID) -> ApiKey:
    key_id = ref if isinstance(ref, uuid.UUID) else _as_uuid(ref)
    if key_id is not None:
        found = await session.get(ApiKey, key_id, with_for_update=True)
        if found is None:
            raise NotFound(f"no API key with id {key_id}")
        return found
    text = str(ref).strip()
    matches = (
        await session.scalars(select(ApiKey).where(col(ApiKey.prefix) == text).with_for_update())
    ).all()
    if not matches:
        raise NotFound(
            f"no API key with the prefix {text!r}: give its id or its prefix as "
            "`nurture api-key list` shows them"
        )
    if len(matches) > 1:
        ids = ", ".join(str(k.id) for k in matches)
        raise Conflict(f"{len(matches)} API keys have the prefix {text!r}: give the id ({ids})")
    return matches[0]


def _as_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None


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
    """Keys this process authenticated lately (by digest), each trusted for `ttl` seconds.

    Requests that miss the cache for the same key at the same time share one lookup: when a
    busy key's entry expires, the requests in flight would otherwise each read the key and
    each write its `last_used_at`, all on the same row."""

    ttl: float = KEY_CACHE_SECONDS
    clock: Callable[[], float] = time.monotonic
    _keys: dict[str, tuple[ApiKey, float]] = field(default_factory=dict)
    _lookups: dict[str, asyncio.Task[ApiKey | None]] = field(default_factory=dict)
    # Bumped by `forget`: a lookup that started before is answered but not remembered (it
    # may have read the key before its revocation committed).
    _generation: int = 0

    async def authenticate(self, sessions: SessionFactory, secret: str) -> ApiKey | None:
        key_digest = digest(secret)
        cached = self._keys.get(key_digest)
        if cached is not None and cached[1] > self.clock():
            return cached[0]
        lookup = self._lookups.get(key_digest)
        # A lookup left by an event loop that has ended (tests run one loop each) is not shared.
        if lookup is None or lookup.get_loop() is not asyncio.get_running_loop():
            lookup = asyncio.create_task(self._look_up(sessions, secret, key_digest))
            self._lookups[key_digest] = lookup
            lookup.add_done_callback(functools.partial(self._done, key_digest))
        # Shielded: a caller that goes away (its client hung up) leaves the others' lookup.
        return await asyncio.shield(lookup)

    def _done(self, key_digest: str, lookup: asyncio.Task[ApiKey | None]) -> None:
        if self._lookups.get(key_digest) is lookup:
            del self._lookups[key_digest]
        if not lookup.cancelled():
            lookup.exception()  # retrieved here too: every caller may have gone away

    async def _look_up(
        self, sessions: SessionFactory, secret: str, key_digest: str
    ) -> ApiKey | None:
        generation = self._generation
        key = await authenticate(sessions, secret)
        if key is None:
            self._keys.pop(key_digest, None)
            return None
        if generation != self._generation:
            return key
        if len(self._keys) >= _MAX_CACHED_KEYS:
            self._keys.clear()  # a flood of distinct keys: start over rather than grow
        self._keys[key_digest] = (key, self.clock() + self.ttl)
        return key

    def forget(self, key_id: uuid.UUID) -> None:
        """Stop trusting this key at once (it was revoked by this process)."""
        self._generation += 1
        for key_digest, (key, _until) in list(self._keys.items()):
            if key.id == key_id:
                del self._keys[key_digest]
