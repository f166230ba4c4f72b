"""The Nurture worker: runs the enrollment, bulk enrollment and segment watch workflows and their
activities.

    python worker.py            # the same as: nurture worker (migrates the database first)

Configured by the environment (see `nurture.settings.Settings`): TEMPORAL_ADDRESS,
TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE, DATABASE_URL. Scale out by running more of these.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from collections.abc import Mapping
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

import workflows
from activities.bulk import BulkActivities
from activities.contacts import ContactActivities
from activities.enrollment import EnrollmentActivities
from activities.messaging import MessagingActivities
from activities.outbound import OutboundActivities
from activities.owners import OwnerActivities
from activities.push import PushActivities
from activities.review import ReviewActivities
from activities.segments import SegmentActivities
from nurture import scoring
from nurture.analytics.schedule import ensure_review_schedule
from nurture.audience.changes import Announcer
from nurture.audience.events import keep_redelivering
from nurture.audience.segments.sweeps import start_segment_watch
from nurture.boot import (
    CommandError,
    configure_logging,
    exit_process,
    migrate_database,
    require_secret_key,
    resolve_database_url,
    run_until_signalled,
)
from nurture.channels.base import ChannelSender
from nurture.channels.outbox import OutboxChannel
from nurture.channels.registry import channels_from_settings, close_channels
from nurture.db.engine import SessionFactory, create_engine, session_factory
from nurture.journeys.enrollments import EnrollmentOptions
from nurture.journeys.reconcile import PendingStarter
from nurture.metrics import worker_runtime
from nurture.sandbox import share_workflow_code
from nurture.sending.throttle import CHANNELS, send_task_queue
from nurture.settings import Settings, get_settings
from nurture.temporal import connect
from nurture.tracing import ensure_search_attributes
from workflows.bulk_enroll import BulkEnroll
from workflows.enrollment import JourneyEnrollment
from workflows.segment_watch import SegmentWatch
from workflows.weekly_review import WeeklyReview

logger = logging.getLogger("nurture.worker")


def default_channels(sessions: SessionFactory) -> dict[str, ChannelSender]:
    outbox = OutboxChannel(sessions)
    return {"email": outbox, "sms": outbox, "push": outbox}


def build_worker(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    channels: Mapping[str, ChannelSender] | None = None,
    max_steps_per_run: int = 500,
    max_cached_workflows: int = 500,
    settings: Settings | None = None,
    **worker_options: Any,
) -> Workers:
    """The worker for enrollments, bulk enrollments and the segment watch.

    Most enrollments sleep for days, so keeping every one of them cached buys little: a
    smaller cache (Temporal's default is 1,000) bounds memory, and a workflow evicted from it
    is replayed from its short history when it wakes."""
    settings = settings or Settings()
    scoring.configure(settings.score_field)
    share_workflow_code(workflows)  # each workflow run imports its module anew
    options = EnrollmentOptions(task_queue, max_steps_per_run=max_steps_per_run)
    enrollment = EnrollmentActivities(sessions)
    bulk = BulkActivities(sessions, client, options)
    messaging = MessagingActivities(
        sessions, channels or default_channels(sessions), settings, client, options
    )
    contacts = ContactActivities(sessions, client, options)
    segments = SegmentActivities(sessions, client, options, settings.segment_sweep_seconds)
    outbound = OutboundActivities(sessions, settings)
    owners = OwnerActivities(sessions)
    push = PushActivities(sessions, channels or default_channels(sessions))
    review = ReviewActivities(sessions, channels or default_channels(sessions), settings)
    main = Worker(
        client,
        task_queue=task_queue,
        workflows=[JourneyEnrollment, BulkEnroll, SegmentWatch, WeeklyReview],
        activities=[
            enrollment.load_contact,
            enrollment.record_steps,
            enrollment.finish_enrollment,
            messaging.send_message,
            contacts.update_contact,
            contacts.change_list_membership,
            bulk.open_run,
            bulk.enroll_page,
            segments.sweep_segments,
            outbound.call_webhook,
            owners.assign_owner,
            push.send_push,
            review.send_weekly_review,
        ],
        max_cached_workflows=max_cached_workflows,
        **worker_options,
    )
    return Workers(
        [main, *send_workers(client, task_queue, messaging, settings, worker_options, push)]
    )


def send_workers(
    client: Client,
    task_queue: str,
    messaging: MessagingActivities,
    settings: Settings,
    worker_options: Mapping[str, Any],
    push: PushActivities | None = None,
) -> list[Worker]:
    """One worker per channel on that channel's send queue, which the enrollments send
    through: `max_task_queue_activities_per_second` is the channel's rate, kept by the
    Temporal server over every worker polling the queue (docs/send-rules.md)."""
    rates = {
        "email": settings.send_rate_email,
        "sms": settings.send_rate_sms,
        "push": settings.send_rate_push,
    }
    # Push has an activity of its own (one notification per device token).
    sends: dict[str, list[Any]] = {
        "email": [messaging.send_message],
        "sms": [messaging.send_message],
    }
    if push is not None:
        sends["push"] = [push.send_push]
    options = {
        k: v for k, v in worker_options.items() if k in ("graceful_shutdown_timeout", "identity")
    }
    return [
        Worker(
            client,
            task_queue=send_task_queue(task_queue, channel),
            activities=sends[channel],
            max_task_queue_activities_per_second=rates[channel],
            **options,
        )
        for channel in CHANNELS
        if channel in sends
    ]


class Workers:
    """Several Temporal workers run as one: the enrollment worker and the send workers. Used
    like a `Worker`: `async with`, or `run()` and `shutdown()`."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    async def __aenter__(self) -> Workers:
        entered: list[Worker] = []
        try:
            for worker in self.workers:
                await worker.__aenter__()
                entered.append(worker)
        except BaseException:
            for worker in reversed(entered):
                await worker.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for worker in reversed(self.workers):
            await worker.__aexit__(*exc)

    async def run(self) -> None:
        """Until shut down; one worker failing shuts the others down and raises."""
        tasks = [asyncio.create_task(worker.run()) for worker in self.workers]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if any(task.exception() is not None for task in done):
                await self.shutdown()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def shutdown(self) -> None:
        await asyncio.gather(*(w.shutdown() for w in self.workers if w.is_running))


def start_loops(
    sessions: SessionFactory, client: Client, options: EnrollmentOptions
) -> list[asyncio.Task[None]]:
    """What a worker runs beside its pollers: opens and clicks that arrived while Temporal was
    unreachable are delivered once it is back, and contact changes whose announcement was cut
    short (a process died, Temporal was away) are announced by the relay; enrollments whose
    workflow never started (Temporal was away when they were made) are started."""
    return [
        asyncio.create_task(keep_redelivering(sessions, client), name="redelivery"),
        asyncio.create_task(
            Announcer(sessions, client, options).keep_relaying(), name="change-relay"
        ),
        asyncio.create_task(scoring.keep_decaying(sessions), name="score-decay"),
        asyncio.create_task(
            PendingStarter(sessions, client, options).keep_starting(), name="pending-starter"
        ),
    ]


async def run_worker(settings: Settings, database_url: str) -> None:
    engine = create_engine(database_url, pool_size=settings.database_pool_size)
    try:
        # With WORKER_METRICS_ADDRESS, Temporal's SDK metrics are served there for Prometheus.
        client = await connect(settings, runtime=worker_runtime(settings.worker_metrics_address))
        added = await ensure_search_attributes(client, settings.temporal_namespace)
        if added:
            logger.info("registered search attributes %s", ", ".join(added))
        sessions = session_factory(engine)
        channels = channels_from_settings(settings, sessions)
        worker = build_worker(
            client,
            sessions,
            settings.temporal_task_queue,
            channels=channels,
            max_steps_per_run=settings.max_steps_per_run,
            max_cached_workflows=settings.worker_max_cached_workflows,
            settings=settings,
        )
        logger.info(
            "worker polling %s (and its send queues) on %s/%s",
            settings.temporal_task_queue,
            settings.temporal_address,
            settings.temporal_namespace,
        )
        await start_segment_watch(client, settings.temporal_task_queue)
        await ensure_review_schedule(client, settings.temporal_task_queue, settings.review_schedule)
        loops = start_loops(
            sessions,
            client,
            EnrollmentOptions(settings.temporal_task_queue, settings.max_steps_per_run),
        )
        try:
            await worker.run()
        finally:
            for loop in loops:
                loop.cancel()
            await close_channels(channels)
    finally:
        await engine.dispose()


def serve_worker(settings: Settings) -> None:
    """Migrate the database, then run the worker until SIGINT or SIGTERM (`nurture worker`).
    Refuses to start without a real SECRET_KEY (the worker signs links in messages)."""
    require_secret_key(settings)
    with resolve_database_url(settings) as database_url:
        asyncio.run(migrate_database(database_url))
        run_until_signalled(lambda: run_worker(settings, database_url))


def main() -> None:
    """`python worker.py`: the same as `nurture worker` (migrates first, stops on a signal).
    Ends through `exit_process`, as the `nurture` command does (see there why)."""
    configure_logging()
    code = 0
    try:
        serve_worker(get_settings())
    except CommandError as err:
        print(f"worker: {err}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    exit_process(code)


if __name__ == "__main__":
    main()
