"""Bare Temporal's side of `bench.broadcast`: a workflow of the same shape as the broadcast
journey (one activity that records a send in Postgres, then a one-day timer), and a plain
worker for it in a process of its own. Prints `ready` once it polls; stops on SIGTERM.

    python -m bench.bare_broadcast --database-url ... --temporal-address ... --task-queue ...
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

BARE_WORKFLOW = "BareBroadcast"
SENDS_TABLE = "bench_bare_sends"

_pool: Any = None


@activity.defn(name="bare_send")
async def bare_send(contact: str) -> None:
    """What a send costs bare: one row written (idempotently)."""
    await _pool.execute(
        f"INSERT INTO {SENDS_TABLE} (contact) VALUES ($1) ON CONFLICT DO NOTHING", contact
    )


@workflow.defn(name=BARE_WORKFLOW)
class BareBroadcast:
    @workflow.run
    async def run(self, contact: str) -> None:
        await workflow.execute_activity(
            "bare_send", contact, start_to_close_timeout=timedelta(minutes=1)
        )
        await workflow.sleep(timedelta(days=1))


async def serve(database_url: str, address: str, task_queue: str) -> None:
    import asyncpg  # only here, never in the workflow sandbox

    global _pool
    _pool = await asyncpg.create_pool(
        database_url.replace("postgresql+asyncpg://", "postgresql://"), max_size=10
    )
    client = await Client.connect(address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Worker(
        client, task_queue=task_queue, workflows=[BareBroadcast], activities=[bare_send]
    ):
        print("ready", flush=True)
        await stop.wait()
    await _pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--temporal-address", required=True)
    parser.add_argument("--task-queue", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.database_url, args.temporal_address, args.task_queue))


if __name__ == "__main__":
    main()
