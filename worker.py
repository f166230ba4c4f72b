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

from activities.bulk import BulkActivities
from activities.contacts import ContactActivities
from activities.enrollment import EnrollmentActivities
from activities.messaging import MessagingActivities
from activities.segments import SegmentActivities
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
from nurture.settings import Settings, get_settings
from nurture.temporal import connect
from nurture.tracing import ensure_search_attributes
from workflows.bulk_enroll import BulkEnroll
from workflows.enrollment import JourneyEnrollment
from workflows.segment_watch import SegmentWatch

logger = logging.getLogger("nurture.worker")


def default_channels(sessions: SessionFactory) -> dict[str, ChannelSender]:
    outbox = OutboxChannel(sessions)
    return {"email": outbox, "sms": outbox}


def build_worker(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    channels: Mapping[str, ChannelSender] | None = None,
    max_steps_per_run: int = 500,
    max_cached_workflows: int = 500,
    settings: Settings | None = None,
    **worker_options: Any,
) -> Worker:
    """The worker for enrollments, bulk enrollments and the segment watch.

    Most enrollments sleep for days, so keeping every one of them cached buys little: a
    smaller cache (Temporal's default is 1,000) bounds memory, and a workflow evicted from it
    is replayed from its short history when it wakes."""
    settings = settings or Settings()
    options = EnrollmentOptions(task_queue, max_steps_per_run=max_steps_per_run)
    enrollment = EnrollmentActivities(sessions)
    bulk = BulkActivities(sessions, client, options)
    messaging = MessagingActivities(
        sessions, channels or default_channels(sessions), settings, client, options
    )
    contacts = ContactActivities(sessions, client, options)
    segments = SegmentActivities(sessions, client, options, settings.segment_sweep_seconds)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[JourneyEnrollment, BulkEnroll, SegmentWatch],
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
        ],
        max_cached_workflows=max_cached_workflows,
        **worker_options,
    )


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
        asyncio.create_task(
            PendingStarter(sessions, client, options).keep_starting(), name="pending-starter"
        ),
    ]


async def run_worker(settings: Settings, database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        client = await connect(settings)
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
            "worker polling %s on %s/%s",
            settings.temporal_task_queue,
            settings.temporal_address,
            settings.temporal_namespace,
        )
        await start_segment_watch(client, settings.temporal_task_queue)
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
