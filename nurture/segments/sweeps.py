"""Starting the SegmentWatch workflow, and asking it for a sweep now (after an import)."""

from __future__ import annotations

import logging

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from nurture.contracts import SEGMENT_WATCH_ID, SEGMENT_WATCH_WORKFLOW, SegmentWatchInput

logger = logging.getLogger(__name__)


async def start_segment_watch(client: Client, task_queue: str) -> None:
    """Start the namespace's SegmentWatch, or leave the running one be (every worker calls
    this at start; one of them wins, the others find it running)."""
    await client.start_workflow(
        SEGMENT_WATCH_WORKFLOW,
        SegmentWatchInput(),
        id=SEGMENT_WATCH_ID,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary="re-checks the segments that start journeys",
    )


async def request_sweep(client: Client) -> bool:
    """Ask for a sweep now; False if no SegmentWatch runs (no worker started it yet: the
    first sweep of the one that does start it will see the same)."""
    try:
        await client.get_workflow_handle(SEGMENT_WATCH_ID).signal("sweep_now")
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        logger.info("no segment watch is running; segments are re-checked when a worker starts")
        return False
    return True
