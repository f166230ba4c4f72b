"""API keys: random secrets shown once, stored as SHA-256 digests.

A key is 32 random bytes, so a fast hash is enough (nothing to brute-force); a slow password
hash would only add latency to every request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlmodel import col, select

from nurture.db.engine import SessionFactory
from nurture.db.models import ApiKey, utcnow

PREFIX = "nrt_"


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
    """The live key whose secret this is, or None. Lookup is by digest, so timing leaks nothing."""
    async with sessions.begin() as session:
        key = await session.scalar(
            select(ApiKey).where(
                col(ApiKey.secret_hash) == digest(secret), col(ApiKey.revoked_at).is_(None)
            )
        )
        if key is not None:
            key.last_used_at = utcnow()
        return key
