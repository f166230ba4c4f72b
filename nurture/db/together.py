"""One statement for what concurrent callers in one process ask at the same time.

A request path that ends with a small statement of its own (mark this change announced, read
this journey's status) sends one per request: under load that is a round trip, a prepared
statement's execution and, for a write, a commit per request, for a few bytes. `Together` makes
such statements shared (group commit): while one is on its way, the keys that arrive wait,
then go together in the next; a key that arrives alone goes at once, so nobody waits on a timer.

Every caller's statement starts after the caller asked (a read sees what was committed before
the ask), and the caller returns only once it has finished. A failure reaches every caller of
that statement.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from nurture.db.engine import SessionFactory

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# What a `Together` runs: the distinct keys waiting (at most `most`), to the value of each
# (a key left out of the answer gets None).
Run = Callable[[SessionFactory, list[K]], Awaitable[Mapping[K, V]]]


class Together(Generic[K, V]):
    """The callers waiting in one process for one statement on one database."""

    def __init__(
        self,
        sessions: SessionFactory,
        run: Run[K, V],
        loop: asyncio.AbstractEventLoop,
        most: int,
    ) -> None:
        self._sessions = sessions
        self._run = run
        self.loop = loop
        self._most = most
        self._waiting: list[tuple[K, asyncio.Future[V | None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def ask(self, keys: Sequence[K]) -> list[V | None]:
        """The value of each key, from a statement that started after this call."""
        futures: list[asyncio.Future[V | None]] = [self.loop.create_future() for _ in keys]
        self._waiting += zip(keys, futures, strict=True)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="together")
        return [await future for future in futures]

    async def _write(self) -> None:
        while self._waiting:
            batch = self._waiting[: self._most]
            del self._waiting[: self._most]
            try:
                found = await self._run(self._sessions, list(dict.fromkeys(k for k, _ in batch)))
            except Exception as err:
                _settle(batch, {}, err)
            except BaseException as err:  # cancelled with the loop: nobody is left to run it
                _settle(batch + self._waiting, {}, err)
                self._waiting.clear()
                raise
            else:
                _settle(batch, found, None)


def _settle(
    batch: Sequence[tuple[Any, asyncio.Future[Any]]],
    found: Mapping[Any, Any],
    err: BaseException | None,
) -> None:
    for key, future in batch:
        if future.done():  # its caller was cancelled meanwhile
            continue
        if err is None:
            future.set_result(found.get(key))
        else:
            future.set_exception(err)


_BY_FACTORY: weakref.WeakKeyDictionary[SessionFactory, dict[Any, Together[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)


async def ask_together(
    sessions: SessionFactory, run: Run[K, V], keys: Sequence[K], most: int = 1_000
) -> list[V | None]:
    """`run` for `keys`, in one statement with the other callers of this process asking `run`
    of the same database at the same time; the value of each key, once that has finished."""
    if not keys:
        return []
    loop = asyncio.get_running_loop()
    known = _BY_FACTORY.setdefault(sessions, {})
    together = known.get(run)
    if together is None or together.loop is not loop:  # tests run one event loop each
        together = known[run] = Together(sessions, run, loop, most)
    return await together.ask(keys)
