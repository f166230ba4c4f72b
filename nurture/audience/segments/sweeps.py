"""Starting the SegmentWatch workflow, and asking it for a sweep now (after an import)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from nurture.contracts import SEGMENT_WATCH_ID, SEGMENT_WATCH_WORKFLOW, SegmentWatchInput


async def start_segment_watch(client: Client, task_queue: str, *, sweep_now: bool = False) -> None:
    """Start the namespace's SegmentWatch, or leave the running one be (every worker calls
    this at start; one of them wins, the others find it running). With `sweep_now`, also
    signal it to sweep at once, in the same call (signal-with-start)."""
    await client.start_workflow(
        SEGMENT_WATCH_WORKFLOW,
        SegmentWatchInput(),
        id=SEGMENT_WATCH_ID,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary="re-checks the segments that start journeys",
        start_signal="sweep_now" if sweep_now else None,
    )


async def request_sweep(client: Client, task_queue: str) -> None:
    """Ask for a sweep now; starts the watch if it is not running (say, it was terminated
    from the Web UI), so the request is never lost."""
    await start_segment_watch(client, task_queue, sweep_now=True)
