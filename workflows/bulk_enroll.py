"""`BulkEnroll`: enroll every member of a list or segment in a journey, page by page,
resumable (the cursor is the last contact id done; enrolling is idempotent per contact)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.bulk import BulkActivities
    from nurture.contracts import (
        BULK_ENROLL_WORKFLOW,
        BulkEnrollInput,
        BulkPage,
        BulkProgress,
        BulkRun,
    )

_PAGES_PER_RUN = 100  # then continue as new, so history stays small for huge lists
_RETRY = RetryPolicy(maximum_interval=timedelta(minutes=1))


@workflow.defn(name=BULK_ENROLL_WORKFLOW)
class BulkEnroll:
    def __init__(self) -> None:
        self._progress = BulkProgress()

    @workflow.query
    def progress(self) -> BulkProgress:
        return self._progress

    @workflow.run
    async def run(self, input: BulkEnrollInput) -> BulkProgress:
        self._progress = input.progress
        if input.bulk_id is None:  # started by a schedule: this run's own progress row
            bulk_id = await workflow.execute_activity_method(
                BulkActivities.open_run,
                BulkRun(
                    workflow_id=workflow.info().workflow_id,
                    journey_key=input.journey_key,
                    list_key=input.list_key,
                    segment_key=input.segment_key,
                ),
                start_to_close_timeout=timedelta(minutes=1),
                retry_policy=_RETRY,
            )
            input = input.model_copy(update={"bulk_id": bulk_id})
        assert input.bulk_id is not None
        for _ in range(_PAGES_PER_RUN):
            result = await workflow.execute_activity_method(
                BulkActivities.enroll_page,
                BulkPage(
                    bulk_id=input.bulk_id,
                    journey_key=input.journey_key,
                    list_key=input.list_key,
                    segment_key=input.segment_key,
                    joined_since=input.joined_since,
                    page_size=input.page_size,
                    progress=self._progress,
                    readmit=input.readmit,
                ),
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=20),
                retry_policy=_RETRY,
                summary=f"enroll {input.audience} into {input.journey_key} "
                f"after {self._progress.done}",
            )
            self._progress = result.progress
            workflow.set_current_details(f"{self._progress.done} contacts done")
            if result.finished:
                return self._progress
        workflow.continue_as_new(input.model_copy(update={"progress": self._progress}))
