"""A worker in a process of its own, for tests that kill it (SIGKILL) half-way through a run:

    python -m tests.worker_process DATABASE_URL TEMPORAL_ADDRESS TASK_QUEUE

It prints "ready" once it polls. It keeps no workflow cache, hence no sticky queue: the
time-skipping test server never hands a task left on a dead worker's sticky queue to another
worker (a real server does, after its schedule-to-start timeout)."""

from __future__ import annotations

import asyncio
import sys

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from nurture.db.engine import create_engine, session_factory
from worker import build_worker


async def main(database_url: str, address: str, task_queue: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    engine = create_engine(database_url)
    worker = build_worker(client, session_factory(engine), task_queue, max_cached_workflows=0)
    async with worker:
        print("ready", flush=True)
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
