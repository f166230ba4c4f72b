"""`WeeklyReview`: started by the Temporal Schedule `nurture-weekly-review` (see
`nurture.analytics.schedule`); sends the week's review email once."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.review import ReviewActivities
    from nurture.analytics.review import REVIEW_WORKFLOW, ReviewRun


@workflow.defn(name=REVIEW_WORKFLOW)
class WeeklyReview:
    @workflow.run
    async def run(self, run: ReviewRun | None = None) -> int:
        # A scheduled start passes no argument: the review covers the week to now.
        at = run.at if run is not None else workflow.now()
        workflow.set_current_details(f"weekly review to {at:%Y-%m-%d %H:%M} UTC")
        return await workflow.execute_activity_method(
            ReviewActivities.send_weekly_review,
            ReviewRun(at=at),
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RetryPolicy(maximum_attempts=5),
            summary="count the week and email the review",
        )
