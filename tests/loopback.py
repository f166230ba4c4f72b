"""A real HTTP server on 127.0.0.1 (uvicorn, in the test's own event loop) for outside peers:
a CRM receiving webhook steps, FCM's token and send endpoints."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.types import ASGIApp


@asynccontextmanager
async def serve(app: ASGIApp, **config: Any) -> AsyncIterator[str]:
    """Serve `app` on a port the OS picks; its base URL (http://127.0.0.1:<port>). `config`:
    more uvicorn options (ssl_certfile, ssl_keyfile for TLS)."""
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", **config))
    async with run(server) as base_url:
        yield base_url


@asynccontextmanager
async def run(server: uvicorn.Server) -> AsyncIterator[str]:
    """Run a server configured elsewhere (its host and port are ignored) on a port the OS
    picks; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # surfaces why it could not start
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()
