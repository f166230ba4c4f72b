"""The local spool (nurture.spool): durable appends, drained in order, kept when a drain is
cut short, appends during a drain never lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from nurture.spool import Spool


async def test_records_are_drained_in_order_and_the_spool_emptied(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert not spool.pending()
    for n in range(5):
        spool.append({"n": n})
    assert spool.pending()
    seen: list[int] = []

    async def handle(record: dict[str, Any]) -> None:
        seen.append(record["n"])

    assert await spool.drain(handle) == 5
    assert seen == [0, 1, 2, 3, 4]
    assert not spool.pending()
    assert await spool.drain(handle) == 0


async def test_a_drain_cut_short_keeps_the_file_and_starts_it_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for n in range(4):
        spool.append({"n": n})
    seen: list[int] = []

    async def fails_at_two(record: dict[str, Any]) -> None:
        if record["n"] == 2:
            raise ConnectionRefusedError("database away")
        seen.append(record["n"])

    with pytest.raises(ConnectionRefusedError):
        await spool.drain(fails_at_two)
    assert spool.pending()
    spool.append({"n": 4})  # arrives meanwhile: a new file, drained after the taken one

    async def handle(record: dict[str, Any]) -> None:
        seen.append(record["n"])

    assert await spool.drain(handle) == 5
    assert seen == [0, 1, 0, 1, 2, 3, 4]  # the cut-short file again from its start
    assert not spool.pending()


async def test_appends_during_a_drain_are_never_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    seen: list[int] = []

    async def slow(record: dict[str, Any]) -> None:
        await asyncio.sleep(0.001)
        seen.append(record["n"])

    async def appender() -> None:
        for n in range(300):
            await asyncio.to_thread(spool.append, {"n": n})

    writing = asyncio.create_task(appender())
    while not writing.done():
        await spool.drain(slow)
        await asyncio.sleep(0.005)
    await writing
    await spool.drain(slow)
    assert sorted(seen) == list(range(300))


async def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append({"n": 1})
    with (tmp_path / "current.jsonl").open("ab") as torn:  # the machine died mid-append
        torn.write(b'{"n": 2, "li')
    seen: list[int] = []

    async def handle(record: dict[str, Any]) -> None:
        seen.append(record["n"])

    assert await spool.drain(handle) == 1
    assert seen == [1]
