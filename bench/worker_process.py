"""The production worker (`worker.build_worker`) in a process of its own, so that the benchmark
can read its memory. Prints `ready` on stdout once it polls; stops cleanly on SIGTERM.

    python -m bench.worker_process --database-url ... --temporal-address ... --task-queue ...
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from nurture.db.engine import create_engine, session_factory
from nurture.metrics import worker_runtime
from nurture.settings import Settings
from nurture.temporal import connect
from worker import build_worker


async def serve(settings: Settings, max_cached_workflows: int | None) -> None:
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
    try:
        # With WORKER_METRICS_ADDRESS in the environment, the SDK's metrics (sticky cache hits
        # and misses, slots, task latencies) are served there, as by `worker.run_worker`.
        client = await connect(settings, runtime=worker_runtime(settings.worker_metrics_address))
        # As `worker.run_worker` builds it; the benchmark may override the cache size to see
        # what it does to memory.
        worker = build_worker(
            client,
            session_factory(engine),
            settings.temporal_task_queue,
            max_steps_per_run=settings.max_steps_per_run,
            max_cached_workflows=(
                settings.worker_max_cached_workflows
                if max_cached_workflows is None
                else max_cached_workflows
            ),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with worker:
            print("ready", flush=True)
            await stop.wait()
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--temporal-address", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--max-cached-workflows", type=int)
    args = parser.parse_args()
    # Logs go to stderr; stdout carries only the "ready" line the benchmark waits for.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    settings = Settings(
        database_url=args.database_url,
        temporal_address=args.temporal_address,
        temporal_namespace=args.namespace,
        temporal_task_queue=args.task_queue,
    )
    asyncio.run(serve(settings, args.max_cached_workflows))


if __name__ == "__main__":
    main()
