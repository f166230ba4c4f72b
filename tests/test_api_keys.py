"""API keys are remembered per process for a few seconds (no database round trip per request),
and `last_used_at` is written at most once a minute per key. Keys are listed and revoked
through the API and `nurture api-key list / revoke`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col

from nurture.apikeys import (
    KEY_CACHE_SECONDS,
    KeyCache,
    authenticate,
    create_api_key,
    list_api_keys,
    revoke_api_key,
)
from nurture.db.engine import SessionFactory
from nurture.db.models import ApiKey, utcnow
from nurture.errors import Conflict, NotFound
from tests.support import ok, reload


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


async def test_requests_missing_the_cache_together_share_one_lookup(
    sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a busy key's entry expires, the requests in flight read the key once between them
    (not once each, each writing `last_used_at` on the same row); one that goes away leaves
    the others' lookup running; a key forgotten during a lookup is not remembered by it."""
    new = await create_api_key(sessions, "busy")
    lookups: list[str] = []
    release = asyncio.Event()
    read = asyncio.Event()  # the lookup has read the key

    async def counted(sessions: SessionFactory, secret: str) -> ApiKey | None:
        lookups.append(secret)
        key = await authenticate(sessions, secret)
        read.set()
        await release.wait()  # every request below arrives while the lookup is on its way
        return key

    monkeypatch.setattr("nurture.apikeys.authenticate", counted)
    cache = KeyCache(ttl=10)

    requests = [asyncio.create_task(cache.authenticate(sessions, new.secret)) for _ in range(32)]
    await read.wait()  # all 32 asked before the lookup's read (they ran first) and now wait on it
    requests[0].cancel()  # its client hung up
    release.set()
    answers = await asyncio.gather(*requests[1:])

    assert len(lookups) == 1
    assert all(a is not None and a.id == new.key.id for a in answers)
    assert requests[0].cancelled()
    assert await cache.authenticate(sessions, new.secret) is not None
    assert len(lookups) == 1  # remembered: no second lookup

    # Revoked by this process while another lookup of the key is on its way, after it read the
    # key: its caller gets the key, but the process does not keep it.
    fresh = KeyCache(ttl=10)
    release.clear()
    read.clear()
    during = asyncio.create_task(fresh.authenticate(sessions, new.secret))
    await read.wait()
    await revoke_api_key(sessions, new.key.id)
    fresh.forget(new.key.id)
    release.set()
    assert (await during) is not None
    assert await fresh.authenticate(sessions, new.secret) is None
    assert len(lookups) == 3


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


# --- listing and revoking --------------------------------------------------------------------


async def test_a_key_revoked_through_the_api_stops_working_at_once(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    other = await create_api_key(sessions, "crm-sync")
    as_other = {"Authorization": f"Bearer {other.secret}"}
    ok(await api.get("/v1/journeys", headers=as_other))  # now cached by this process

    listed = ok(await api.get("/v1/api-keys"))["items"]
    revoked = ok(await api.delete(f"/v1/api-keys/{other.key.id}"))
    refused = await api.get("/v1/journeys", headers=as_other)
    again = ok(await api.delete(f"/v1/api-keys/{other.key.id}"))
    after = {k["name"]: k for k in ok(await api.get("/v1/api-keys"))["items"]}

    assert [(k["name"], k["prefix"], k["current"]) for k in listed] == [
        ("tests", listed[0]["prefix"], True),
        ("crm-sync", other.secret[:12], False),
    ]
    assert all(k["revoked_at"] is None and "secret_hash" not in k for k in listed)
    assert listed[1]["last_used_at"] is not None
    assert revoked["id"] == str(other.key.id) and revoked["revoked_at"] is not None
    assert refused.status_code == 401  # within the cache time: this process forgot it
    assert again["revoked_at"] == revoked["revoked_at"]  # revoking twice changes nothing
    assert after["crm-sync"]["revoked_at"] == revoked["revoked_at"]
    assert after["tests"]["revoked_at"] is None
    assert await authenticate(sessions, other.secret) is None


async def test_a_key_cannot_revoke_itself_through_the_api(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    [mine] = ok(await api.get("/v1/api-keys"))["items"]

    itself = await api.delete(f"/v1/api-keys/{mine['id']}")
    unknown = await api.delete(f"/v1/api-keys/{uuid.uuid4()}")
    malformed = await api.delete("/v1/api-keys/nrt_abc")

    assert itself.status_code == 409 and itself.json()["error"] == "conflict"
    assert "cannot revoke itself" in itself.json()["detail"]
    assert unknown.status_code == 404
    assert malformed.status_code == 422
    ok(await api.get("/v1/api-keys"))  # still works


async def test_revoke_by_prefix_or_id(sessions: SessionFactory) -> None:
    first = await create_api_key(sessions, "one")
    second = await create_api_key(sessions, "two")
    async with sessions.begin() as session:  # two keys sharing a prefix (48 random bits)
        await session.execute(
            update(ApiKey).where(col(ApiKey.id) == second.key.id).values(prefix="nrt_shared")
        )
        await session.execute(
            update(ApiKey).where(col(ApiKey.id) == first.key.id).values(prefix="nrt_shared")
        )
    third = await create_api_key(sessions, "three")

    by_prefix = await revoke_api_key(sessions, third.secret[:12])
    with pytest.raises(Conflict, match="2 API keys have the prefix 'nrt_shared'"):
        await revoke_api_key(sessions, "nrt_shared")
    with pytest.raises(NotFound):
        await revoke_api_key(sessions, "nrt_nothing")
    by_id = await revoke_api_key(sessions, str(first.key.id))

    assert (by_prefix.key.id, by_prefix.newly) == (third.key.id, True)
    assert (by_id.key.id, by_id.newly) == (first.key.id, True)
    assert [k.name for k in await list_api_keys(sessions) if k.revoked_at is None] == ["two"]


def _cli(*args: str, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATA_DIR"}
    env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "nurture.cli", "api-key", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )


async def test_nurture_api_key_list_and_revoke(
    database_url: str, sessions: SessionFactory, tmp_path: Path
) -> None:
    kept = await create_api_key(sessions, "kept")
    leaked = await create_api_key(sessions, "leaked")
    now = [0.0]
    api_process = KeyCache(ttl=KEY_CACHE_SECONDS, clock=lambda: now[0])  # a running API
    assert await api_process.authenticate(sessions, leaked.secret) is not None

    revoke = await asyncio.to_thread(
        _cli, "revoke", leaked.secret[:12], database_url=database_url, cwd=tmp_path
    )
    listing = await asyncio.to_thread(_cli, "list", database_url=database_url, cwd=tmp_path)
    unknown = await asyncio.to_thread(
        _cli, "revoke", "nrt_nothing", database_url=database_url, cwd=tmp_path
    )

    assert revoke.returncode == 0, revoke.stderr
    assert f"API key 'leaked' ({leaked.secret[:12]}..., id {leaked.key.id}) revoked" in (
        revoke.stdout
    )
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "PREFIX", "CREATED", "LAST", "USED", "REVOKED"]
    rows = {line.split()[1]: line for line in lines[1:]}
    assert rows["kept"].startswith(str(kept.key.id)) and rows["kept"].endswith(" -")
    assert rows["leaked"].endswith("UTC")  # revoked, with the time
    assert unknown.returncode == 1
    assert "no API key with the prefix 'nrt_nothing'" in unknown.stderr
    # A running API process trusts its cached answer until it expires, then refuses the key.
    assert await api_process.authenticate(sessions, leaked.secret) is not None
    now[0] += KEY_CACHE_SECONDS + 0.1
    assert await api_process.authenticate(sessions, leaked.secret) is None
    assert await api_process.authenticate(sessions, kept.secret) is not None
