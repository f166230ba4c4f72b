"""What every request needs, created once per process (FastAPI lifespan) and injected."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from temporalio.client import Client

from nurture.apikeys import KeyCache
from nurture.channels.base import ChannelSender
from nurture.db.engine import SessionFactory
from nurture.journeys.enrollments import EnrollmentOptions
from nurture.settings import Settings


@dataclass(frozen=True)
class Resources:
    settings: Settings
    sessions: SessionFactory
    temporal: Client
    # Senders by channel ("email", "sms") for test sends; None: the development outbox.
    channels: Mapping[str, ChannelSender] | None = None
    api_keys: KeyCache = field(default_factory=KeyCache)

    @property
    def enrollment_options(self) -> EnrollmentOptions:
        return EnrollmentOptions(
            task_queue=self.settings.temporal_task_queue,
            max_steps_per_run=self.settings.max_steps_per_run,
        )

    def workflow_url(self, workflow_id: str) -> str:
        """A direct link to a workflow (all its runs) in the Temporal Web UI."""
        base = self.settings.temporal_ui_url.rstrip("/")
        namespace = quote(self.settings.temporal_namespace, safe="")
        return f"{base}/namespaces/{namespace}/workflows/{quote(workflow_id, safe='')}"
