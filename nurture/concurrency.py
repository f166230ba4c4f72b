"""Running one coroutine per item with at most `limit` of them in flight at once: how the
code fans out to Temporal (starting enrollments, signalling) without flooding the server or
the connection pool."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def gather_limited(
    limit: int, func: Callable[[T], Awaitable[R]], items: Iterable[T]
) -> list[R]:
    """`func(item)` for every item, `limit` at a time; results in item order. The first
    exception is raised (the others still run to the end, as with `asyncio.gather`).

    A single item is awaited in place: no task or gather for it (one event of one request to
    one enrollment, the common case on the API's event path)."""
    items = list(items)
    if len(items) == 1:
        return [await func(items[0])]
    return await asyncio.gather(*_limited(limit, func, items))


async def gather_limited_outcomes(
    limit: int, func: Callable[[T], Awaitable[R]], items: Iterable[T]
) -> list[R | BaseException]:
    """Like `gather_limited`, with each failure returned in its item's place, not raised."""
    return await asyncio.gather(*_limited(limit, func, items), return_exceptions=True)


def _limited(
    limit: int, func: Callable[[T], Awaitable[R]], items: Iterable[T]
) -> list[Awaitable[R]]:
    semaphore = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with semaphore:
            return await func(item)

    return [one(item) for item in items]
