"""Events per second through the SendGrid webhook, against bare Temporal signals, in one run.

    .venv/bin/python -m bench.webhooks                   # 4,000 clicks per side in batches of 1,000
    .venv/bin/python -m bench.webhooks --events 2000

The stack of `bench.run` (embedded PostgreSQL, one dev server, the production worker and the
API in processes of their own; the API with a SendGrid verification key of the benchmark's
own). `--events` enrollments of `bench-event` wait for a custom event; each has a sent message
with a SendGrid id. Then, in ABBA order (bare, webhook, webhook, bare; half the events each):

- webhook side: signed SendGrid batches of `--batch` click events (one per message), posted
  `--concurrency` at a time. Reported: each batch's answer time, the rate at which events were
  answered (stored, matched, written for delivery), and the rate at which they were delivered
  (every `events` row signalled: the API signals after answering, 32 at a time).
- bare side: `handle.signal("event", EnrollmentEvent(kind="click", ...))` to the same
  workflows, 32 in flight.

A click the enrollment does not wait for still costs it a workflow task, on both sides alike.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select
from sqlmodel import col
from temporalio.client import Client

from bench.stack import (
    Component,
    CpuMeter,
    api_process,
    dev_server,
    embedded_postgres,
    free_port,
    log,
    worker_process,
)
from bench.workload import (
    EVENT_JOURNEY,
    bare_start,
    make_contacts,
    make_pending_enrollments,
    publish_journey,
    run_pool,
    wait_for_count,
)
from nurture.contracts import EnrollmentEvent
from nurture.db.engine import SessionFactory, create_engine, session_factory
from nurture.db.migrate import upgrade_async
from nurture.db.models import Enrollment, Event, Message, utcnow

TASK_QUEUE = "bench-webhooks"


@dataclass
class Side:
    events: int = 0
    seconds: float = 0.0  # first call .. last answer
    delivered_seconds: float = 0.0  # first call .. every event signalled (webhook side)
    batch_seconds: list[float] = field(default_factory=list)
    failed: int = 0
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def delivered_per_second(self) -> float:
        return self.events / self.delivered_seconds if self.delivered_seconds else 0.0


def sign(key: ec.EllipticCurvePrivateKey, body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


def click(provider_id: str) -> dict[str, Any]:
    return {
        "email": "someone@bench.test",
        "timestamp": int(time.time()),
        "event": "click",
        "url": "https://example.com/pricing",
        "sg_event_id": uuid.uuid4().hex,
        "sg_message_id": f"{provider_id}.filterdrecv-5645d9c87f-6r2ch-1-5DDE4B2C-1.0",
    }


async def add_messages(sessions: SessionFactory, enrollments: list[Enrollment]) -> list[str]:
    """A sent SendGrid message for each enrollment; their provider ids."""
    ids = [f"sg-bench-{e.id.hex}" for e in enrollments]
    for start in range(0, len(enrollments), 1000):
        async with sessions.begin() as session:
            session.add_all(
                Message(
                    idempotency_key=f"{e.id}:await_event:1",
                    enrollment_id=e.id,
                    contact_id=e.contact_id,
                    step_id="await_event",
                    channel="email",
                    template="bench",
                    status="sent",
                    provider="sendgrid",
                    provider_message_id=pid,
                    sent_at=utcnow(),
                )
                for e, pid in zip(
                    enrollments[start : start + 1000], ids[start : start + 1000], strict=True
                )
            )
    return ids


async def undelivered(sessions: SessionFactory) -> int:
    async with sessions() as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(Event).where(col(Event.signalled_at).is_(None))
            )
            or 0
        )


async def webhook_round(
    http: httpx.AsyncClient,
    sessions: SessionFactory,
    key: ec.EllipticCurvePrivateKey,
    provider_ids: list[str],
    batch: int,
    concurrency: int,
    meter: CpuMeter,
) -> Side:
    side = Side(events=len(provider_ids))
    bodies = [
        json.dumps([click(pid) for pid in provider_ids[i : i + batch]]).encode()
        for i in range(0, len(provider_ids), batch)
    ]

    async def post(body: bytes) -> None:
        began = time.perf_counter()
        response = await http.post("/v1/webhooks/sendgrid", content=body, headers=sign(key, body))
        side.batch_seconds.append(time.perf_counter() - began)
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code} {response.text[:200]}")

    cpu = meter.snapshot()
    began = time.perf_counter()
    timed = await run_pool(bodies, concurrency, post, max_errors=0)
    side.seconds = time.perf_counter() - began
    side.failed = len(timed.errors)
    for error in timed.errors:
        log(f"webhook batch failed: {error}")
    while True:  # the API signals after answering: until every event is delivered
        if not await undelivered(sessions):
            break
        await asyncio.sleep(0.1)
    side.delivered_seconds = time.perf_counter() - began
    side.cpu_seconds = meter.spent(cpu, meter.snapshot())
    return side


async def bare_round(client: Client, enrollments: list[Enrollment], meter: CpuMeter) -> Side:
    async def signal(enrollment: Enrollment) -> None:
        await client.get_workflow_handle(enrollment.workflow_id).signal(
            "event",
            EnrollmentEvent(
                event_id=f"bare-{uuid.uuid4()}",
                kind="click",
                step="await_event",
                visit=1,
                link="https://example.com/pricing",
                occurred_at=utcnow(),
            ),
        )

    cpu = meter.snapshot()
    timed = await run_pool(enrollments, 32, signal)
    side = Side(events=timed.count, seconds=timed.seconds, delivered_seconds=timed.seconds)
    side.failed = len(timed.errors)
    side.cpu_seconds = meter.spent(cpu, meter.snapshot())
    return side


async def run(options: argparse.Namespace) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    with tempfile.TemporaryDirectory(prefix="nurture-bench-webhooks-") as tmp:
        root = Path(tmp)
        async with embedded_postgres(root) as (database_url, postgres_pid):
            await upgrade_async(database_url)
            engine = create_engine(database_url)
            sessions = session_factory(engine)
            try:
                async with dev_server(root) as (env, temporal_pid):
                    return await _with_stack(
                        options, root, database_url, sessions, env.client, key, public,
                        {"temporal": temporal_pid, "postgres": postgres_pid},
                    )  # fmt: skip
            finally:
                await engine.dispose()


async def _with_stack(
    options: argparse.Namespace,
    root: Path,
    database_url: str,
    sessions: SessionFactory,
    client: Client,
    key: ec.EllipticCurvePrivateKey,
    public: str,
    pids: dict[str, int],
) -> dict[str, Any]:
    address = client.service_client.config.target_host
    journey = await publish_journey(sessions, EVENT_JOURNEY)
    environment = {
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": client.namespace,
        "TEMPORAL_TASK_QUEUE": TASK_QUEUE,
        "SECRET_KEY": secrets.token_urlsafe(32),
        "SENDGRID_WEBHOOK_PUBLIC_KEY": public,
        "MAX_BODY_BYTES": str(4_000_000),
    }
    async with (
        worker_process(root, database_url, address, TASK_QUEUE) as worker_pid,
        api_process(root, environment, free_port()) as (api_url, api_pid),
        httpx.AsyncClient(base_url=api_url, timeout=300) as http,
    ):
        meter = CpuMeter(
            [
                Component("bench", psutil.Process(), tree=False),
                Component("api", psutil.Process(api_pid), tree=False),
                Component("worker", psutil.Process(worker_pid), tree=False),
                Component("temporal", psutil.Process(pids["temporal"]), tree=False),
                Component("postgres", psutil.Process(pids["postgres"]), tree=True),
            ]
        )
        contacts = await make_contacts(sessions, options.events, "hook")
        enrollments = await make_pending_enrollments(sessions, journey, contacts)
        log(f"starting {len(enrollments):,} enrollments that wait for an event")
        await run_pool(
            enrollments, 32, lambda e: bare_start(client, TASK_QUEUE, journey, e), max_errors=0
        )
        await wait_for_count(
            sessions, journey.journey_id, "active", len(enrollments), "await_event", within=3600
        )
        provider_ids = await add_messages(sessions, enrollments)
        half = len(enrollments) // 2
        rounds: list[tuple[str, Side]] = []
        for name, part in (("bare", 0), ("webhook", 0), ("webhook", 1), ("bare", 1)):
            chosen = slice(part * half, (part + 1) * half)
            if name == "bare":
                side = await bare_round(client, enrollments[chosen], meter)
            else:
                side = await webhook_round(
                    http, sessions, key, provider_ids[chosen], options.batch,
                    options.concurrency, meter,
                )  # fmt: skip
            log(
                f"{name}: {side.events} events, answered in {side.seconds:.1f} s"
                f" ({side.per_second:.0f}/s), delivered {side.delivered_per_second:.0f}/s"
            )
            rounds.append((name, side))
    result: dict[str, Any] = {"options": vars(options) | {"output": str(options.output)}}
    for name in ("bare", "webhook"):
        sides = [s for n, s in rounds if n == name]
        events = sum(s.events for s in sides)
        seconds = sum(s.seconds for s in sides)
        delivered = sum(s.delivered_seconds for s in sides)
        cpu: dict[str, float] = {}
        for s in sides:
            for k, v in s.cpu_seconds.items():
                cpu[k] = cpu.get(k, 0.0) + v
        result[name] = {
            "events": events,
            "failed": sum(s.failed for s in sides),
            "answered_per_second": round(events / seconds, 1) if seconds else 0,
            "delivered_per_second": round(events / delivered, 1) if delivered else 0,
            "batch_seconds": sorted(round(b, 2) for s in sides for b in s.batch_seconds),
            "cpu_ms_per_event": {k: round(1000 * v / events, 2) for k, v in cpu.items()},
            "rounds": [asdict(s) for s in sides],
        }
    result["ratio_delivered"] = round(
        result["webhook"]["delivered_per_second"] / result["bare"]["delivered_per_second"], 3
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    parser.add_argument("--events", type=int, default=4000, help="click events per side (4000)")
    parser.add_argument("--batch", type=int, default=1000, help="events per request (1000)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight (2)")
    parser.add_argument(
        "--output", type=Path, default=Path(tempfile.gettempdir()) / "nurture-bench-webhooks.json"
    )
    options = parser.parse_args(argv)
    result = asyncio.run(run(options))
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(result, indent=2) + "\n")
    bare, hook = result["bare"], result["webhook"]
    print(
        f"SendGrid webhook, {hook['events']:,} click events in batches of {options.batch:,}"
        f" ({options.concurrency} in flight) against {bare['events']:,} bare signals:\n"
        f"  webhook answered   {hook['answered_per_second']:>8.0f} events/s"
        f"  (batch answer times {hook['batch_seconds']} s)\n"
        f"  webhook delivered  {hook['delivered_per_second']:>8.0f} events/s (every event signalled)\n"
        f"  bare signals       {bare['delivered_per_second']:>8.0f} events/s\n"
        f"  delivered / bare   {result['ratio_delivered']:>8.1%}\n"
        f"  CPU ms per event: webhook {hook['cpu_ms_per_event']}; bare {bare['cpu_ms_per_event']}\n"
        f"JSON: {options.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
