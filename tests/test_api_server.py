"""The API's HTTP server as `nurture api` and `nurture dev` run it (`nurture.devstack.api_server`):
how long it keeps an idle connection open.

Behind a load balancer, the API must not close an idle kept-alive connection before the balancer
does: a request the balancer sends on it as the API closes it gets a 502. uvicorn's own default
is 5 s; AWS's load balancers keep idle connections 60 s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from starlette.types import Receive, Scope, Send

from nurture.devstack import api_server
from nurture.settings import Settings
from tests.loopback import run


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@asynccontextmanager
async def _served(keep_alive_seconds: int) -> AsyncIterator[int]:
    """`api_server` as `nurture api` builds it, on a port the OS picks (yielded)."""
    server = api_server(_hello, "127.0.0.1", 0, keep_alive_seconds)
    server.config.lifespan = "off"  # `_hello` has no lifespan
    async with run(server) as base_url:
        yield int(base_url.rsplit(":", 1)[1])


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One GET on a kept-alive connection; the answer's status line (empty: the connection
    was closed)."""
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    status = await reader.readline()
    if status:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        await reader.readexactly(2)  # the body, b"ok"
    return status


async def test_an_idle_connection_is_kept_as_long_as_configured() -> None:
    async with _served(keep_alive_seconds=1) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.3)
            assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 200"), "closed too soon"
            await asyncio.sleep(1.8)
            # The server closed it: nothing more to read.
            assert await asyncio.wait_for(reader.read(), timeout=2) == b""
        finally:
            writer.close()


def test_the_default_outlasts_a_load_balancers_idle_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = Settings(_env_file=None).api_keep_alive_seconds
    assert default > 60  # AWS's load balancers: 60 s; uvicorn's own default: 5 s
    assert api_server(_hello, "127.0.0.1", 0).config.timeout_keep_alive == default
    monkeypatch.setenv("API_KEEP_ALIVE_SECONDS", "620")
    assert Settings(_env_file=None).api_keep_alive_seconds == 620
    monkeypatch.setenv("API_KEEP_ALIVE_SECONDS", "0")
    with pytest.raises(ValueError, match="api_keep_alive_seconds"):
        Settings(_env_file=None)
