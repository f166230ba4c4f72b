"""A dependency that is down is a 503 with Retry-After, fast; never a 500.

Postgres away is what `nurture.db.engine.database_away` recognises; Temporal away is an RPC
error whose status says so, the SDK's "Failed client connect", or our own time limit on a call
(`nurture.journeys.enrollments.CALL_TIME_LIMIT`). Anything else stays a 500: a bug."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from temporalio.service import RPCError

from nurture.db.engine import DatabaseUnreachable, database_away
from nurture.errors import Unavailable
from nurture.journeys.enrollments import SERVER_AWAY

logger = logging.getLogger("nurture.api")

# What a client should wait before trying again: outages worth a 503 are restarts and
# failovers, over in seconds to a minute.
RETRY_AFTER_SECONDS = 5


def unavailable(what: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"error": "unavailable", "detail": f"{what} cannot be reached: {detail}; retry later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def temporal_away(exc: BaseException) -> bool:
    if isinstance(exc, RPCError):
        return exc.status in SERVER_AWAY
    if isinstance(exc, RuntimeError):
        return "client connect" in str(exc).lower()
    return isinstance(exc, TimeoutError)


@contextmanager
def saved_if_temporal_away(what: str) -> Iterator[None]:
    """Temporal away during the block: a 503 saying what was saved (`what`) and that
    repeating the request is safe, instead of a bare "cannot be reached"."""
    try:
        yield
    except Exception as err:
        if temporal_away(err):
            raise Unavailable(f"Temporal cannot be reached: {what}") from err
        raise


def _internal(exc: Exception) -> JSONResponse:
    """Not an outage: a bug. Raised again, for the catch-all handler (500, logged with its
    traceback) as any other unexpected error."""
    raise exc


def install_outage_handlers(app: FastAPI) -> None:
    @app.exception_handler(RPCError)
    async def temporal_error(request: Request, exc: RPCError) -> JSONResponse:
        if exc.status in SERVER_AWAY:
            logger.warning("Temporal away on %s %s: %s", request.method, request.url.path, exc)
            return unavailable("Temporal", exc.message or "no answer")
        return _internal(exc)

    @app.exception_handler(TimeoutError)
    async def timed_out(request: Request, exc: TimeoutError) -> JSONResponse:
        # Our time limits are on calls to Temporal and the database: one of them is away.
        logger.warning("timed out on %s %s", request.method, request.url.path)
        return unavailable("a service this request needs", "no answer in time")

    @app.exception_handler(RuntimeError)
    async def runtime_error(request: Request, exc: RuntimeError) -> JSONResponse:
        if temporal_away(exc):  # the SDK could not (re)connect to Temporal
            return unavailable("Temporal", str(exc)[:200])
        return _internal(exc)

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        if database_away(exc):
            logger.warning("database away on %s %s: %s", request.method, request.url.path, exc)
            return unavailable("the database", type(exc).__name__)
        return _internal(exc)

    for kind in (
        DatabaseUnreachable,
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        sa_exc.DBAPIError,
        sa_exc.TimeoutError,
    ):
        app.add_exception_handler(kind, database_error)
