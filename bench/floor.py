"""The web framework's own cost per request: the floor under the API's figures in `bench.run`.

A FastAPI app with nothing behind it (the `POST /v1/events` body validated by a pydantic model,
a 202 answered with another) runs under the same uvicorn (uvloop, httptools, one process, no
access log) and is driven by the same load generator (aiohttp, closed loop). Reported: requests
a second, and the CPU per request of the server process and of the load generator.

    .venv/bin/python -m bench.floor                 # 4,000 requests after 200 untimed, 32 in flight
    .venv/bin/python -m bench.floor --requests 20000 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

import aiohttp
import psutil
from fastapi import FastAPI, status
from pydantic import BaseModel

from bench.stack import free_port


class EventIn(BaseModel):
    contact_id: uuid.UUID
    name: str
    idempotency_key: str | None = None


class EventOut(BaseModel):
    id: uuid.UUID
    name: str
    signalled: int


app = FastAPI()


@app.post("/v1/events", status_code=status.HTTP_202_ACCEPTED, response_model=EventOut)
async def post_event(body: EventIn) -> EventOut:
    return EventOut(id=uuid.uuid4(), name=body.name, signalled=1)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def measure(requests: int, concurrency: int) -> dict[str, float]:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "bench.floor:app", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(base, connector=connector) as http:

            async def one() -> None:
                body = {"contact_id": str(uuid.uuid4()), "name": "ping", "idempotency_key": "k"}
                async with http.post("/v1/events", json=body) as answer:
                    await answer.read()
                    if answer.status != 202:
                        raise RuntimeError(f"answered {answer.status}")

            for _ in range(100):  # until it listens
                try:
                    await one()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            await asyncio.gather(*(one() for _ in range(200)))  # warm-up
            gate = asyncio.Semaphore(concurrency)

            async def limited() -> None:
                async with gate:
                    await one()

            api, me = psutil.Process(server.pid), psutil.Process()
            api_before, me_before, began = _cpu(api), _cpu(me), time.monotonic()
            await asyncio.gather(*(limited() for _ in range(requests)))
            seconds = time.monotonic() - began
            return {
                "requests_per_second": round(requests / seconds, 1),
                "server_cpu_ms_per_request": round(1000 * (_cpu(api) - api_before) / requests, 3),
                "load_generator_cpu_ms_per_request": round(
                    1000 * (_cpu(me) - me_before) / requests, 3
                ),
            }
    finally:
        server.terminate()
        await server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    options = parser.parse_args(argv)
    result = asyncio.run(measure(options.requests, options.concurrency))
    print(
        f"FastAPI floor: {result['requests_per_second']:.0f} requests/s; CPU per request: "
        f"server {result['server_cpu_ms_per_request']:.2f} ms, "
        f"load generator {result['load_generator_cpu_ms_per_request']:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
