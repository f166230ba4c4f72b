"""`BulkEnroll`: enroll every member of a list in a journey, page by page, resumable."""

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
    )

_PAGES_PER_RUN = 100  # then continue as new, so history stays small for huge lists


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
        for _ in range(_PAGES_PER_RUN):
            result = await workflow.execute_activity_method(
                BulkActivities.enroll_page,
                BulkPage(
                    bulk_id=input.bulk_id,
                    journey_key=input.journey_key,
                    list_key=input.list_key,
                    page_size=input.page_size,
                    progress=self._progress,
                ),
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
                summary=f"enroll {input.list_key} into {input.journey_key} "
                f"after {self._progress.done}",
            )
            self._progress = result.progress
            workflow.set_current_details(f"{self._progress.done} contacts done")
            if result.finished:
                return self._progress
        workflow.continue_as_new(input.model_copy(update={"progress": self._progress}))
