"""What any event endpoint costs at least, against the bare signal: the floor under (b).

`bench.run`'s (b) compares `POST /v1/events` with a bare `handle.signal("event", ...)`. This
measures, on the same kind of stack (a Temporal dev server, an embedded PostgreSQL, no worker:
like (b)'s "paused" mode), three sides in ABBA rounds of the same size:

- **bare**: the signal from the load generator's Temporal client, as (b)'s bare side;
- **http+signal**: a FastAPI endpoint under uvicorn (the API's server, one process) that
  validates the body and signals, nothing else: what an HTTP hop adds to a signal;
- **http+store+signal**: the same endpoint storing the event first, one `INSERT ... ON CONFLICT
  (idempotency key) DO NOTHING` on an asyncpg pool: the least a service can do that never loses
  an event it answered 202 for (no contact lookup, no change record, no authentication).

Reported: calls a second, each side against bare, and the CPU per call of each process (load
generator, endpoint, Temporal server, PostgreSQL). Whatever Nurture's own event path costs
comes on top of the last side.

    .venv/bin/python -m bench.signal_floor                  # 2,000 calls per side, 32 in flight
    .venv/bin/python -m bench.signal_floor --calls 4000 --output /tmp/floor.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
from fastapi import FastAPI, status
from pydantic import BaseModel
from sqlalchemy.engine import make_url
from temporalio.client import Client

from bench.stack import (
    Component,
    CpuMeter,
    dev_server,
    embedded_postgres,
    free_port,
    log,
)
from bench.workload import run_pool
from nurture.contracts import EnrollmentEvent
from nurture.db.models import utcnow
from nurture.settings import Settings
from nurture.temporal import connect

TASK_QUEUE = "nobody-polls-this"  # no worker: the workflows only collect signals
SIDES = ("bare", "http+signal", "http+store+signal")
TABLE = """CREATE TABLE IF NOT EXISTS floor_events (
    id uuid PRIMARY KEY,
    workflow_id text NOT NULL,
    name text NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    received_at timestamptz NOT NULL DEFAULT now()
)"""
INSERT = """INSERT INTO floor_events (id, workflow_id, name, idempotency_key)
VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key) DO NOTHING"""


def _signal(workflow_id: str, name: str) -> EnrollmentEvent:
    """The payload `POST /v1/events` signals (the bare side of `bench.run` sends the same)."""
    return EnrollmentEvent(
        event_id=f"floor-{workflow_id}",
        kind="custom",
        name=name,
        properties={},
        occurred_at=utcnow(),
    )


# --- the endpoint (run by uvicorn in its own process: `bench.signal_floor:app`) ---------------


class EventIn(BaseModel):
    workflow_id: str
    name: str
    idempotency_key: str


class EventOut(BaseModel):
    id: uuid.UUID
    signalled: int


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.client = await connect(
        Settings(_env_file=None, temporal_address=os.environ["FLOOR_TEMPORAL_ADDRESS"])
    )
    app.state.pool = await asyncpg.create_pool(os.environ["FLOOR_DSN"], min_size=4, max_size=20)
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=_lifespan)


async def _signal_from(body: EventIn) -> None:
    handle = app.state.client.get_workflow_handle(body.workflow_id)
    await handle.signal("event", _signal(body.workflow_id, body.name))


@app.post("/signal", status_code=status.HTTP_202_ACCEPTED, response_model=EventOut)
async def signal_only(body: EventIn) -> EventOut:
    await _signal_from(body)
    return EventOut(id=uuid.uuid4(), signalled=1)


@app.post("/store-and-signal", status_code=status.HTTP_202_ACCEPTED, response_model=EventOut)
async def store_and_signal(body: EventIn) -> EventOut:
    event_id = uuid.uuid4()
    await app.state.pool.execute(
        INSERT, event_id, body.workflow_id, body.name, body.idempotency_key
    )
    await _signal_from(body)
    return EventOut(id=event_id, signalled=1)


@dataclass
class _Total:
    calls: int = 0
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)


# --- the benchmark ---------------------------------------------------------------------------


def _asyncpg_dsn(sqlalchemy_url: str) -> str:
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(False)


@asynccontextmanager
async def _endpoint(env: dict[str, str]) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "bench.signal_floor:app", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
        env={**os.environ, **env},
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        await process.wait()


async def _start(client: Client, workflow_ids: Sequence[str], concurrency: int) -> None:
    async def one(workflow_id: str) -> None:
        await client.start_workflow("Nothing", id=workflow_id, task_queue=TASK_QUEUE)

    started = await run_pool(workflow_ids, concurrency, one)
    if started.errors:
        raise RuntimeError(f"could not start the workflows to signal: {started.errors[:3]}")


async def measure(calls: int, concurrency: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="nurture-floor-"))
    log(f"starting PostgreSQL and the Temporal dev server under {root}")
    async with embedded_postgres(root) as (url, pg_pid), dev_server(root) as (env, server_pid):
        dsn = _asyncpg_dsn(url)
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(TABLE)
        finally:
            await connection.close()
        client = env.client
        address = client.service_client.config.target_host
        half = calls // 2
        warm = max(10, min(200, calls // 10))
        # Each side signals its own workflows, once each: warm-up, then two rounds of half.
        ids = {
            side: [f"floor-{side}-{uuid.uuid4()}" for _ in range(warm + calls)] for side in SIDES
        }
        await _start(client, [w for side in SIDES for w in ids[side]], concurrency)
        log(f"{len(SIDES) * (warm + calls)} workflows started on a queue no worker polls")
        async with (
            _endpoint({"FLOOR_TEMPORAL_ADDRESS": address, "FLOOR_DSN": dsn}) as (base, api_pid),
            aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=concurrency)) as http,
        ):

            async def post(path: str, workflow_id: str) -> None:
                body = {"workflow_id": workflow_id, "name": "ping", "idempotency_key": workflow_id}
                async with http.post(path, json=body) as answer:
                    await answer.read()
                    if answer.status != 202:
                        raise RuntimeError(f"{path}: {answer.status}")

            async def bare(workflow_id: str) -> None:
                await client.get_workflow_handle(workflow_id).signal(
                    "event", _signal(workflow_id, "ping")
                )

            calls_of: dict[str, Callable[[str], Awaitable[None]]] = {
                "bare": bare,
                "http+signal": lambda w: post("/signal", w),
                "http+store+signal": lambda w: post("/store-and-signal", w),
            }
            for _ in range(100):  # until the endpoint listens
                try:
                    await post("/signal", ids["http+signal"][0])
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            for side in SIDES:
                warmed = await run_pool(ids[side][1:warm], concurrency, calls_of[side])
                if warmed.errors:
                    raise RuntimeError(f"{side} warm-up failed: {warmed.errors[:3]}")
            meter = CpuMeter(
                [
                    Component("load generator", psutil.Process(), False),
                    Component("endpoint", psutil.Process(api_pid), False),
                    Component("temporal", psutil.Process(server_pid), False),
                    Component("postgres", psutil.Process(pg_pid), True),
                ]
            )
            totals = {side: _Total() for side in SIDES}
            order = [*SIDES, *reversed(SIDES)]  # ABC CBA: what drifts weighs on all alike
            for n, side in enumerate(order):
                rest = ids[side][warm:]
                items = rest[:half] if n < len(SIDES) else rest[half:]
                before = meter.snapshot()
                timed = await run_pool(items, concurrency, calls_of[side])
                spent = CpuMeter.spent(before, meter.snapshot())
                if timed.errors:
                    raise RuntimeError(
                        f"{side}: {len(timed.errors)} calls failed: {timed.errors[:3]}"
                    )
                log(
                    f"  {side:18s} {timed.count} in {timed.seconds:.2f} s = {timed.count / timed.seconds:.1f}/s"
                )
                total = totals[side]
                total.calls += timed.count
                total.seconds += timed.seconds
                for name, seconds in spent.items():
                    total.cpu[name] = total.cpu.get(name, 0.0) + seconds
        # Every 202 of the storing side stands for a row: check, so a broken store shows.
        connection = await asyncpg.connect(dsn)
        try:
            stored = await connection.fetchval("SELECT count(*) FROM floor_events")
        finally:
            await connection.close()
        if stored != warm - 1 + calls:
            raise RuntimeError(f"{stored} events stored for {warm - 1 + calls} answered")
    result: dict[str, Any] = {"calls_per_side": calls, "concurrency": concurrency, "sides": {}}
    bare_rate = totals["bare"].calls / totals["bare"].seconds
    for side, total in totals.items():
        rate = total.calls / total.seconds
        result["sides"][side] = {
            "per_second": round(rate, 1),
            "of_bare": round(rate / bare_rate, 3),
            "cpu_ms_per_call": {
                name: round(1000 * seconds / total.calls, 2) for name, seconds in total.cpu.items()
            },
        }
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        f"Signal floor: {result['calls_per_side']} calls per side, "
        f"{result['concurrency']} in flight, no worker",
        f"{'side':20s} {'calls/s':>8s} {'of bare':>8s}   CPU ms per call",
    ]
    for side, figures in result["sides"].items():
        cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in figures["cpu_ms_per_call"].items())
        lines.append(
            f"{side:20s} {figures['per_second']:8.1f} {100 * figures['of_bare']:7.1f}%   {cpu}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.signal_floor", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per side (2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight (32)")
    parser.add_argument("--output", type=Path, help="also write the result as JSON here")
    options = parser.parse_args(argv)
    if options.calls < 2:
        parser.error("--calls must be at least 2 (two rounds per side)")
    began = time.monotonic()
    result = asyncio.run(measure(options.calls, options.concurrency))
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    if options.output:
        options.output.write_text(json.dumps(result, indent=2))
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
