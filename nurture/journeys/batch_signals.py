"""Signalling every enrollment of a journey through one Temporal batch operation.

Pausing or resuming a journey of 100,000 contacts one signal at a time from the API process
costs that process 100,000 RPCs. A batch operation is one RPC: the server finds the running
enrollments with a visibility query over the search attributes the workflow keeps
(`WorkflowType`, `ExecutionStatus`, `JourneyKey`: see nurture/tracing.py) and signals them
itself, at the rate its dynamic config allows (`worker.batcherRPS`; `nurture dev` raises it,
see `dev_server_flags`).

Visibility lags the workflows a little: an enrollment whose workflow started just before the
batch may not be listed yet. So after the batch, the enrollments created in the last
`VISIBILITY_LAG` are signalled one by one as well (a repeated pause or resume changes nothing
in a workflow). An enrollment created after the status change committed starts with the new
status, or its enroll call catches up (`nurture.journeys.enrollments._catch_up_pause`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from temporalio.api.batch.v1 import BatchOperationSignal
from temporalio.api.enums.v1 import BatchOperationState
from temporalio.api.workflowservice.v1 import (
    DescribeBatchOperationRequest,
    StartBatchOperationRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from nurture.contracts import ENROLLMENT_WORKFLOW
from nurture.tracing import JOURNEY_KEY

logger = logging.getLogger(__name__)

VISIBILITY_LAG = timedelta(seconds=60)
_POLL_SECONDS = 0.5
_BATCH_TIME_LIMIT = 3600.0  # 100,000 enrollments take minutes at the dev server's rate


class BatchUnsupported(Exception):
    """The server has no batch operations or no visibility store (the time-skipping test
    server): signal one by one instead."""


@dataclass(frozen=True)
class BatchResult:
    job_id: str
    total: int  # enrollments the query found
    signalled: int
    failed: int  # ended between the listing and the signal, mostly


def journey_query(journey_key: str) -> str:
    quoted = journey_key.replace("\\", "\\\\").replace("'", "\\'")
    return (
        f"WorkflowType = '{ENROLLMENT_WORKFLOW}' AND ExecutionStatus = 'Running' "
        f"AND {JOURNEY_KEY.name} = '{quoted}'"
    )


async def signal_by_batch(
    client: Client, journey_key: str, signal: str, reason: str
) -> BatchResult:
    """Signal every running enrollment of the journey with one batch operation and wait for
    it to finish. Raises BatchUnsupported where the server cannot, RPCError when it is away."""
    job_id = f"nurture-{signal}-{journey_key}-{uuid.uuid4()}"
    request = StartBatchOperationRequest(
        namespace=client.namespace,
        visibility_query=journey_query(journey_key),
        job_id=job_id,
        reason=reason,
        signal_operation=BatchOperationSignal(signal=signal, identity=client.identity),
    )
    try:
        await client.workflow_service.start_batch_operation(request)
    except RPCError as err:
        if err.status in (
            RPCStatusCode.UNIMPLEMENTED,
            RPCStatusCode.INVALID_ARGUMENT,
            RPCStatusCode.RESOURCE_EXHAUSTED,
        ):
            # The test server has no batcher; a server without advanced visibility refuses
            # the query (INVALID_ARGUMENT names the attribute it cannot search); a namespace
            # runs few batch operations at once (RESOURCE_EXHAUSTED while another pause or
            # resume runs). Signalling one by one reaches the same enrollments.
            raise BatchUnsupported(err.message) from err
        raise
    describe = DescribeBatchOperationRequest(namespace=client.namespace, job_id=job_id)
    async with asyncio.timeout(_BATCH_TIME_LIMIT):
        while True:
            state = await client.workflow_service.describe_batch_operation(describe)
            if state.state != BatchOperationState.BATCH_OPERATION_STATE_RUNNING:
                break
            await asyncio.sleep(_POLL_SECONDS)
    if state.state != BatchOperationState.BATCH_OPERATION_STATE_COMPLETED:
        # Failed or cancelled part way: one by one reaches everyone (a repeat is harmless).
        raise BatchUnsupported(
            f"batch {signal} of {journey_key!r} ended {BatchOperationState.Name(state.state)}"
        )
    logger.info(
        "batch %s of %s: %d of %d signalled, %d failed (job %s)",
        signal,
        journey_key,
        state.complete_operation_count,
        state.total_operation_count,
        state.failure_operation_count,
        job_id,
    )
    return BatchResult(
        job_id,
        int(state.total_operation_count),
        int(state.complete_operation_count),
        int(state.failure_operation_count),
    )
