"""Prometheus metrics (prometheus-client), served by the API at `/metrics`.

Two kinds, so that every API replica and worker can be scraped without adding up wrong:

- **Counted in Postgres at scrape time** (the same figures whichever replica answers):
  enrollments started, ended (by status and reason) and refused at entry, per journey;
  enrollments in flight; messages by channel and status; events received by kind; provider
  webhook events by provider and kind. Grouped counts over indexed columns, one query each.
- **Counted in this process**: API request latency by route and status, webhook requests
  refused (bad signature, malformed) by provider.

Temporal's own SDK metrics (workflow and activity task latency, schedule-to-start, slots,
sticky cache...) come from the worker: with WORKER_METRICS_ADDRESS set, its Temporal runtime
serves them in Prometheus format on that address (see `worker_runtime`).

Access: with METRICS_TOKEN set, `/metrics` needs `Authorization: Bearer <METRICS_TOKEN>`;
without it, only loopback clients are answered (the figures name journeys).
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlmodel import col
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from nurture.db.engine import SessionFactory
from nurture.db.models import (
    ACTIVE_ENROLLMENT_STATUSES,
    Enrollment,
    EnrollmentStatus,
    Event,
    Journey,
    WebhookEvent,
)
from nurture.db.models import (
    Message as MessageRow,
)

REGISTRY = CollectorRegistry(auto_describe=True)

API_LATENCY = Histogram(
    "nurture_api_request_duration_seconds",
    "API request latency, by route template, method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBHOOK_REFUSALS = Counter(
    "nurture_webhook_refusals_total",
    "Provider webhook requests refused, by provider and why (unauthorized, malformed)",
    ["provider", "reason"],
    registry=REGISTRY,
)


def webhook_refused(provider: str, reason: str) -> None:
    WEBHOOK_REFUSALS.labels(provider=provider[:32], reason=reason).inc()


class RequestMetrics:
    """ASGI middleware timing each HTTP request, labelled by its route template (not its path,
    which would make a series per contact)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == "/metrics":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            API_LATENCY.labels(_template(scope), scope.get("method", ""), str(status)).observe(
                time.perf_counter() - started
            )


def _template(scope: Scope) -> str:
    """The request's path with its path parameters named (`/v1/contacts/{contact_id}`)."""
    path: str = scope.get("path", "")
    if path.startswith("/static/"):
        return "/static"
    if scope.get("route") is None:
        return "unmatched"
    segments = path.split("/")
    values = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    return "/".join("{" + values[s] + "}" if s in values else s for s in segments)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def database_metrics(sessions: SessionFactory) -> list[Metric]:
    started = CounterMetricFamily(
        "nurture_enrollments_started", "Enrollments that entered, by journey", labels=["journey"]
    )
    ended = CounterMetricFamily(
        "nurture_enrollments_ended",
        "Enrollments that ended, by journey, status and reason",
        labels=["journey", "status", "reason"],
    )
    refused = CounterMetricFamily(
        "nurture_enrollments_refused",
        "Contacts not enrolled at entry, by journey and reason",
        labels=["journey", "reason"],
    )
    in_flight = GaugeMetricFamily(
        "nurture_enrollments_in_flight", "Enrollments running now, by journey", labels=["journey"]
    )
    messages = CounterMetricFamily(
        "nurture_messages", "Messages by channel and status", labels=["channel", "status"]
    )
    events = CounterMetricFamily(
        "nurture_events_received",
        "Events received (opens, clicks, custom events), by kind; machine opens apart",
        labels=["kind", "machine"],
    )
    webhooks = CounterMetricFamily(
        "nurture_webhook_events",
        "Verified provider webhook events, by provider and kind",
        labels=["provider", "kind"],
    )
    async with sessions() as session:
        keys = dict((await session.execute(select(col(Journey.id), col(Journey.key)))).all())
        rows = await session.execute(
            select(
                col(Enrollment.journey_id),
                col(Enrollment.status),
                col(Enrollment.exit_reason),
                func.count(),
            ).group_by(
                col(Enrollment.journey_id), col(Enrollment.status), col(Enrollment.exit_reason)
            )
        )
        totals: dict[str, int] = {}
        flying: dict[str, int] = {}
        for journey_id, status, reason, count in rows:
            key = keys.get(journey_id, str(journey_id))
            if status == EnrollmentStatus.NOT_ENROLLED:
                refused.add_metric([key, reason or ""], count)
                continue
            totals[key] = totals.get(key, 0) + count
            if status in ACTIVE_ENROLLMENT_STATUSES:
                flying[key] = flying.get(key, 0) + count
            else:
                ended.add_metric([key, status, reason or ""], count)
        for key in keys.values():
            started.add_metric([key], totals.get(key, 0))
            in_flight.add_metric([key], flying.get(key, 0))
        for channel, status, count in await session.execute(
            select(col(MessageRow.channel), col(MessageRow.status), func.count()).group_by(
                col(MessageRow.channel), col(MessageRow.status)
            )
        ):
            messages.add_metric([channel, status], count)
        for kind, machine, count in await session.execute(
            select(col(Event.kind), col(Event.machine), func.count()).group_by(
                col(Event.kind), col(Event.machine)
            )
        ):
            events.add_metric([kind, str(bool(machine)).lower()], count)
        for provider, kind, count in await session.execute(
            select(col(WebhookEvent.provider), col(WebhookEvent.kind), func.count()).group_by(
                col(WebhookEvent.provider), col(WebhookEvent.kind)
            )
        ):
            webhooks.add_metric([provider, kind], count)
    return [started, ended, refused, in_flight, messages, events, webhooks]


async def exposition(sessions: SessionFactory) -> bytes:
    """This process's metrics and the database's, in the Prometheus text format."""
    database = CollectorRegistry(auto_describe=False)
    database.register(_Families(await database_metrics(sessions)))
    return generate_latest(REGISTRY) + generate_latest(database)


def may_scrape(token: str | None, authorization: str | None, client_host: str | None) -> bool:
    if token:
        offered = (authorization or "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(offered.encode(), token.encode())
    try:
        return client_host is not None and ipaddress.ip_address(client_host).is_loopback
    except ValueError:
        return False


def worker_runtime(address: str | None) -> Runtime | None:
    """A Temporal runtime whose SDK metrics are served for Prometheus on `address`
    (host:port), or None to keep the default runtime (no metrics endpoint)."""
    if not address:
        return None
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))


CONTENT_TYPE = CONTENT_TYPE_LATEST
