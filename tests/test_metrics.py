"""/metrics: the database's counts, this process's latency and refusals, who may scrape; and
the worker's Temporal SDK metrics from its runtime's Prometheus endpoint."""

from __future__ import annotations

import asyncio
import re
import socket

import httpx
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.resources import Resources
from nurture.db.engine import SessionFactory
from nurture.metrics import worker_runtime
from nurture.settings import Settings
from tests.support import exits_at_once, make_contact, ok, publish_journey
from worker import build_worker


def _sample(body: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition, or None."""
    for line in body.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_metrics_count_enrollments_requests_and_refusals(
    api: httpx.AsyncClient, sessions: SessionFactory, worker: None
) -> None:
    await publish_journey(sessions, exits_at_once("quick-exit", {"type": "api"}))
    contact = await make_contact(sessions)
    # This process's figures count every earlier test's requests too: compare with before.
    start = (await api.get("/metrics")).text
    created = ok(
        await api.post(
            "/v1/enrollments", json={"journey_key": "quick-exit", "contact_id": str(contact)}
        ),
        201,
    )
    async with asyncio.timeout(15):
        while True:
            body = ok(await api.get(f"/v1/enrollments/{created['id']}"))
            if body["status"] == "exited":
                break
            await asyncio.sleep(0.05)
    before = (await api.get("/metrics")).text
    refused = await api.post("/v1/webhooks/sendgrid", content=b"[]")
    assert refused.status_code in (400, 401)

    scraped = await api.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    text = scraped.text
    assert _sample(text, "nurture_enrollments_started_total", journey="quick-exit") == 1
    assert (
        _sample(
            text, "nurture_enrollments_ended_total", journey="quick-exit", status="exited",
            reason="done",
        )
        == 1
    )  # fmt: skip
    assert _sample(text, "nurture_enrollments_in_flight", journey="quick-exit") == 0
    # Latency by route template, not by path.
    posts = {"route": "/v1/enrollments", "method": "POST", "status": "201"}
    counted = "nurture_api_request_duration_seconds_count"
    assert (_sample(text, counted, **posts) or 0) - (_sample(start, counted, **posts) or 0) == 1
    assert _sample(
        text,
        "nurture_api_request_duration_seconds_count",
        route="/v1/enrollments/{enrollment_id}",
        method="GET",
        status="200",
    )
    reason = "unauthorized" if refused.status_code == 401 else "malformed"
    after = _sample(text, "nurture_webhook_refusals_total", provider="sendgrid", reason=reason)
    earlier = _sample(before, "nurture_webhook_refusals_total", provider="sendgrid", reason=reason)
    assert after == (earlier or 0) + 1


async def test_metrics_need_the_token_or_loopback(
    sessions: SessionFactory, client: Client, settings: Settings
) -> None:
    async def get(settings: Settings, host: str, headers: dict[str, str]) -> int:
        app = create_app(Resources(settings=settings, sessions=sessions, temporal=client))
        transport = httpx.ASGITransport(app=app, client=(host, 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://nurture.test") as http:
            return (await http.get("/metrics", headers=headers)).status_code

    assert await get(settings, "127.0.0.1", {}) == 200
    assert await get(settings, "10.1.2.3", {}) == 403
    locked = settings.model_copy(update={"metrics_token": SecretStr("s3cret-token")})
    assert await get(locked, "10.1.2.3", {"Authorization": "Bearer s3cret-token"}) == 200
    assert await get(locked, "10.1.2.3", {"Authorization": "Bearer wrong"}) == 403
    assert await get(locked, "127.0.0.1", {}) == 403


async def test_worker_serves_temporal_sdk_metrics(
    env: WorkflowEnvironment, sessions: SessionFactory, task_queue: str
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runtime = worker_runtime(f"127.0.0.1:{port}")
    assert runtime is not None
    client = await Client.connect(
        env.client.service_client.config.target_host,
        namespace=env.client.namespace,
        data_converter=pydantic_data_converter,
        runtime=runtime,
    )
    async with build_worker(client, sessions, task_queue), httpx.AsyncClient() as http:
        async with asyncio.timeout(15):
            while True:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                if "temporal_" in text:
                    break
                await asyncio.sleep(0.2)
    assert re.search(r"^temporal_\w+", text, flags=re.MULTILINE)
    assert worker_runtime(None) is None
