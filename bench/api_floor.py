"""What any endpoint costs at least against the bare Temporal call it ends with: the floor
under `bench.run`'s ratios.

`bench.run` compares `POST /v1/enrollments` with a bare `client.start_workflow` (a) and
`POST /v1/events` with a bare `handle.signal("event", ...)` (b). This measures, on the same
kind of stack (a Temporal dev server, an embedded PostgreSQL, no worker: like the "paused"
mode), for each of the two calls, three sides in ABC CBA rounds of the same size:

- **bare**: the call from the load generator's Temporal client, with `bench.run`'s arguments
  (for a start: the enrollment's input, id policies, summary and search attributes);
- **http**: a FastAPI endpoint under uvicorn (as the API runs: one process) that validates
  the body and makes the call, nothing else: what an HTTP hop adds;
- **http+store**: the same endpoint writing its row first (one `INSERT ... ON CONFLICT DO
  NOTHING` on an asyncpg pool, committed): the least a service can do that never loses what
  it answered for (no contact lookup, no authentication, no change record, no mark after).

Reported: calls a second, each side against bare, and the CPU per call of each process (load
generator, endpoint, Temporal server, PostgreSQL). Whatever Nurture's own path costs comes on
top of "http+store".

    .venv/bin/python -m bench.api_floor                      # 2,000 calls per side, 32 in flight
    .venv/bin/python -m bench.api_floor --calls 4000 --kinds signal --output /tmp/floor.json
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
    wait_healthy,
)
from bench.workload import SLEEP_JOURNEY, Published, bare_signal, bare_start, run_pool
from nurture.contracts import enrollment_workflow_id
from nurture.db.models import Enrollment
from nurture.journeys.definition import JourneyDefinition
from nurture.settings import Settings
from nurture.temporal import connect

TASK_QUEUE = "nobody-polls-this"  # no worker: the workflows only wait, like "paused"
KINDS = ("start", "signal")
SIDES = ("bare", "http", "http+store")
TABLE = """CREATE TABLE floor_rows (
    id uuid PRIMARY KEY,
    kind text NOT NULL,
    contact_id uuid NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    received_at timestamptz NOT NULL DEFAULT now()
)"""
INSERT = """INSERT INTO floor_rows (id, kind, contact_id, idempotency_key)
VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key) DO NOTHING"""
DEFINITION = JourneyDefinition.model_validate(SLEEP_JOURNEY)


# The journey the started workflows are of: in no database (nobody runs them).
JOURNEY = Published(
    key=DEFINITION.key,
    journey_id=uuid.uuid4(),
    version_id=uuid.uuid4(),
    version=1,
    definition=DEFINITION,
    first_step=DEFINITION.start,
)


async def start_call(client: Client, contact_id: uuid.UUID) -> None:
    """`bench.run`'s bare start (the enrollment's input, policies, summary, search attributes)."""
    enrollment = Enrollment(
        journey_id=JOURNEY.journey_id,
        journey_version_id=JOURNEY.version_id,
        version=JOURNEY.version,
        contact_id=contact_id,
        workflow_id=enrollment_workflow_id(JOURNEY.key, contact_id),
    )
    await bare_start(client, TASK_QUEUE, JOURNEY, enrollment)


async def signal_call(client: Client, contact_id: uuid.UUID) -> None:
    """`bench.run`'s bare signal: the payload `POST /v1/events` signals."""
    await bare_signal(client, JOURNEY.key, contact_id)


CALLS: dict[str, Callable[[Client, uuid.UUID], Awaitable[None]]] = {
    "start": start_call,
    "signal": signal_call,
}


# --- the endpoint (run by uvicorn in its own process: `bench.api_floor:app`) -----------------


class CallIn(BaseModel):
    contact_id: uuid.UUID
    idempotency_key: str


class CallOut(BaseModel):
    id: uuid.UUID


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


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/{kind}", status_code=status.HTTP_202_ACCEPTED, response_model=CallOut)
async def call_only(kind: str, body: CallIn) -> CallOut:
    await CALLS[kind](app.state.client, body.contact_id)
    return CallOut(id=uuid.uuid4())


@app.post("/{kind}/stored", status_code=status.HTTP_202_ACCEPTED, response_model=CallOut)
async def store_then_call(kind: str, body: CallIn) -> CallOut:
    row_id = uuid.uuid4()
    await app.state.pool.execute(INSERT, row_id, kind, body.contact_id, body.idempotency_key)
    await CALLS[kind](app.state.client, body.contact_id)
    return CallOut(id=row_id)


# --- the benchmark ---------------------------------------------------------------------------


@dataclass
class _Total:
    calls: int = 0
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)


def _asyncpg_dsn(sqlalchemy_url: str) -> str:
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(False)


@asynccontextmanager
async def _endpoint(root: Path, env: dict[str, str]) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = root / "endpoint.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "uvicorn", "bench.api_floor:app", "--port", str(port),
            "--log-level", "warning", "--no-access-log",
            env={**os.environ, **env}, stdout=log_file, stderr=log_file,
        )  # fmt: skip
        try:
            await wait_healthy(process, base_url, log_path)
            yield base_url, process.pid
        finally:
            process.terminate()
            await process.wait()


async def _stored(dsn: str, kind: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM floor_rows WHERE kind = $1", kind
        )
    finally:
        await connection.close()
    return count


async def _compare(
    kind: str,
    client: Client,
    http: aiohttp.ClientSession,
    meter: CpuMeter,
    dsn: str,
    calls: int,
    concurrency: int,
) -> dict[str, Any]:
    warm = max(10, min(200, calls // 10))
    # Each side calls its own workflows, once each: a warm-up, then two rounds of half.
    ids = {side: [uuid.uuid4() for _ in range(warm + calls)] for side in SIDES}
    if kind == "signal":
        everyone = [w for side in SIDES for w in ids[side]]
        started = await run_pool(everyone, concurrency, lambda w: start_call(client, w))
        if started.errors:
            raise RuntimeError(f"could not start the workflows to signal: {started.errors[:3]}")
        log(f"{kind}: {len(everyone)} workflows started on a queue no worker polls")

    async def post(path: str, contact_id: uuid.UUID) -> None:
        body = {"contact_id": str(contact_id), "idempotency_key": f"{path}:{contact_id}"}
        async with http.post(path, json=body) as answer:
            await answer.read()
            if answer.status != 202:
                raise RuntimeError(f"POST {path}: {answer.status} {await answer.text()}")

    side_calls: dict[str, Callable[[uuid.UUID], Awaitable[None]]] = {
        "bare": lambda w: CALLS[kind](client, w),
        "http": lambda w: post(f"/{kind}", w),
        "http+store": lambda w: post(f"/{kind}/stored", w),
    }
    for side in SIDES:
        warmed = await run_pool(ids[side][:warm], concurrency, side_calls[side])
        if warmed.errors:
            raise RuntimeError(f"{kind} {side} warm-up failed: {warmed.errors[:3]}")
    totals = {side: _Total() for side in SIDES}
    half = calls // 2
    for n, side in enumerate([*SIDES, *reversed(SIDES)]):  # what drifts weighs on all alike
        rest = ids[side][warm:]
        items = rest[:half] if n < len(SIDES) else rest[half:]
        before = meter.snapshot()
        timed = await run_pool(items, concurrency, side_calls[side])
        spent = CpuMeter.spent(before, meter.snapshot())
        if timed.errors:
            raise RuntimeError(f"{kind} {side}: {len(timed.errors)} failed: {timed.errors[:3]}")
        rate = timed.count / timed.seconds
        log(f"  {kind:6s} {side:10s} {timed.count} in {timed.seconds:.2f} s = {rate:.1f}/s")
        total = totals[side]
        total.calls += timed.count
        total.seconds += timed.seconds
        for name, seconds in spent.items():
            total.cpu[name] = total.cpu.get(name, 0.0) + seconds
    # Every answer of the storing side stands for a row: checked, so that a broken store shows.
    if (stored := await _stored(dsn, kind)) != warm + calls:
        raise RuntimeError(f"{kind}: {stored} rows stored for {warm + calls} answers")
    bare_rate = totals["bare"].calls / totals["bare"].seconds
    return {
        side: {
            "per_second": round(total.calls / total.seconds, 1),
            "of_bare": round(total.calls / total.seconds / bare_rate, 3),
            "cpu_ms_per_call": {
                name: round(1000 * seconds / total.calls, 2) for name, seconds in total.cpu.items()
            },
        }
        for side, total in totals.items()
    }


async def measure(kinds: Sequence[str], calls: int, concurrency: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="nurture-floor-"))
    log(f"starting PostgreSQL and the Temporal dev server under {root}")
    result: dict[str, Any] = {"calls_per_side": calls, "concurrency": concurrency, "kinds": {}}
    async with embedded_postgres(root) as (url, pg_pid), dev_server(root) as (env, server_pid):
        dsn = _asyncpg_dsn(url)
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(TABLE)
        finally:
            await connection.close()
        client = env.client
        address = client.service_client.config.target_host
        endpoint_env = {"FLOOR_TEMPORAL_ADDRESS": address, "FLOOR_DSN": dsn}
        async with (
            _endpoint(root, endpoint_env) as (base, endpoint_pid),
            aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=concurrency)) as http,
        ):
            meter = CpuMeter(
                [
                    Component("load generator", psutil.Process(), False),
                    Component("endpoint", psutil.Process(endpoint_pid), False),
                    Component("temporal", psutil.Process(server_pid), False),
                    Component("postgres", psutil.Process(pg_pid), True),
                ]
            )
            for kind in kinds:
                log(f"{kind}: {calls} calls per side, {concurrency} in flight")
                result["kinds"][kind] = await _compare(
                    kind, client, http, meter, dsn, calls, concurrency
                )
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        f"API floor: {result['calls_per_side']} calls per side, "
        f"{result['concurrency']} in flight, no worker",
        f"{'call':7s}{'side':12s} {'calls/s':>8s} {'of bare':>8s}   CPU ms per call",
    ]
    for kind, sides in result["kinds"].items():
        for side, figures in sides.items():
            cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in figures["cpu_ms_per_call"].items())
            lines.append(
                f"{kind:7s}{side:12s} {figures['per_second']:8.1f} "
                f"{100 * figures['of_bare']:7.1f}%   {cpu}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_floor", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per side (2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight (32)")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"comma-separated: {', '.join(KINDS)} (both)"
    )
    parser.add_argument("--output", type=Path, help="also write the result as JSON here")
    options = parser.parse_args(argv)
    kinds = [k.strip() for k in options.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds takes {', '.join(KINDS)}, comma-separated")
    if options.calls < 2:
        parser.error("--calls must be at least 2 (two rounds per side)")
    began = time.monotonic()
    result = asyncio.run(measure(kinds, options.calls, options.concurrency))
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    if options.output:
        options.output.write_text(json.dumps(result, indent=2))
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
