"""A worker in a process of its own, for tests that kill it (SIGKILL) half-way through a run:

    python -m tests.worker_process DATABASE_URL TEMPORAL_ADDRESS TASK_QUEUE

It prints "ready" once it polls. Its channels are the environment's (EMAIL_CHANNEL, SMTP_HOST,
...: the outbox unless set), as `nurture worker` reads them. It keeps no workflow cache, hence no sticky queue: the
time-skipping test server never hands a task left on a dead worker's sticky queue to another
worker (a real server does, after its schedule-to-start timeout)."""

from __future__ import annotations

import asyncio
import sys

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from nurture.channels.registry import channels_from_settings
from nurture.db.engine import create_engine, session_factory
from nurture.settings import Settings
from worker import build_worker


async def main(database_url: str, address: str, task_queue: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    settings = Settings(temporal_task_queue=task_queue)
    worker = build_worker(
        client,
        sessions,
        task_queue,
        channels=channels_from_settings(settings, sessions),
        max_cached_workflows=0,
        settings=settings,
    )
    async with worker:
        print("ready", flush=True)
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
