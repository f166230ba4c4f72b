"""A broadcast: a segment journey over N contacts (send one email, then wait a day), against bare
Temporal starting N workflows of the same shape on the same server, in one run; then pausing and
resuming the journey (one batch operation each) against signalling its enrollments one by one.

    .venv/bin/python -m bench.broadcast                        # 100,000 contacts
    .venv/bin/python -m bench.broadcast --contacts 5000        # what a shared 2-core machine allows

The stack of `bench.run` (embedded PostgreSQL, one dev server as `nurture dev` runs it, the
production worker and the API in processes of their own) and a plain worker for the bare
workflow (`bench.bare_broadcast`), each polling its own task queue. In order:

1. bare: `--concurrency` starts in flight of `BareBroadcast(contact)` (an activity that writes a
   row to Postgres, then a one-day timer); timed from the first start to the last row written;
2. Nurture: the journey `bench-broadcast` (trigger: segment `bench-audience`, mode once; steps
   send_email then wait 1d) created and published through the API; timed from the
   publish request to the last message sent (`messages.sent_at`). The BulkEnroll workflow
   enrolls the segment page by page, `NURTURE_BULK_CONCURRENCY` (`--bulk-concurrency`) at once;
3. POST /v1/journeys/bench-broadcast/pause, then /resume: each one batch signal over a
   visibility query, timed until the batch has reached everyone (the API answers then); then
   the same resume signalled one by one (50 in flight) from the benchmark process, for the ratio.

`--nurture-first` runs 2. before 1.: the side that runs second finds the first one's workflows
on the server, so a run of each order brackets the ratio.

`--pause-only` measures 3. alone, on a journey that holds its contacts before the email (wait a
day, then send): no bare side and no send, so 100,000 enrollments are in place in about half
the time. The pause and resume reach the same sleeping enrollments as after a broadcast.
`--no-pause` stops after 2. (at 100,000 contacts, 3. adds about 20 minutes to two hours).

RSS of the worker, the API and the Temporal server is sampled 4 times a second throughout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import text
from temporalio.client import Client

from bench.bare_broadcast import BARE_WORKFLOW, SENDS_TABLE
from bench.stack import (
    MB,
    REPO,
    Component,
    CpuMeter,
    RssSampler,
    _stop,
    _tail,
    api_process,
    dev_server,
    drain_stdout,
    embedded_postgres,
    free_port,
    log,
    worker_process,
)
from bench.workload import run_pool
from nurture.apikeys import create_api_key
from nurture.db.engine import SessionFactory, create_engine, session_factory
from nurture.db.migrate import upgrade_async
from nurture.journeys.lifecycle import signal_journey_enrollments

TASK_QUEUE = "bench-broadcast"
BARE_QUEUE = "bench-bare-broadcast"
JOURNEY: dict[str, Any] = {
    "key": "bench-broadcast",
    "name": "Benchmark: product announcement",
    "trigger": {"type": "segment", "segment": "bench-audience", "mode": "once"},
    "start": "announce",
    "steps": {
        "announce": {"type": "send_email", "template": "bench-announce", "next": "wait_day"},
        "wait_day": {"type": "wait", "duration": "1d"},
    },
}
# `--pause-only`: the same journey with its wait first, so nobody is sent anything.
HOLDING: dict[str, Any] = {
    **JOURNEY,
    "start": "wait_day",
    "steps": {
        "wait_day": {"type": "wait", "duration": "1d", "next": "announce"},
        "announce": {"type": "send_email", "template": "bench-announce"},
    },
}


@asynccontextmanager
async def ready_process(argv: Sequence[str], log_path: Path, name: str) -> AsyncIterator[int]:
    """A process that prints `ready` once it serves: yields its pid."""
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=log_file
        )
        try:
            assert process.stdout is not None
            try:
                line = await asyncio.wait_for(process.stdout.readline(), timeout=120)
            except TimeoutError:
                line = b""
            if line.strip() != b"ready":
                raise RuntimeError(f"{name} did not start:\n{_tail(log_path)}")
            async with drain_stdout(process, log_path.with_suffix(".stdout.log")):
                yield process.pid
        finally:
            await _stop(process, name)


async def execute(sessions: SessionFactory, sql: str, **params: Any) -> None:
    async with sessions.begin() as session:
        await session.execute(text(sql), params)


async def scalar(sessions: SessionFactory, sql: str, **params: Any) -> Any:
    async with sessions() as session:
        return await session.scalar(text(sql), params)


async def prepare(sessions: SessionFactory, contacts: int) -> None:
    await execute(
        sessions,
        "INSERT INTO contacts (id, external_id, email, fields, tags, consent, created_at,"
        " updated_at) SELECT gen_random_uuid(), 'b' || g, 'b' || g || '@bench.test', '{}',"
        " '{bench-audience}', '{}', now(), now() FROM generate_series(1, :n) g",
        n=contacts,
    )
    await execute(
        sessions,
        "INSERT INTO templates (id, key, channel, subject, text, created_at, updated_at)"
        " VALUES (gen_random_uuid(), 'bench-announce', 'email', 'News', 'Hi {{ contact.email }}',"
        " now(), now())",
    )
    await execute(
        sessions,
        "INSERT INTO segments (id, key, name, filter, created_at, updated_at) VALUES"
        " (gen_random_uuid(), 'bench-audience', 'Audience',"
        ' \'{"type": "tag", "tag": "bench-audience", "op": "has"}\', now(), now())',
    )
    await execute(
        sessions,
        f"CREATE TABLE {SENDS_TABLE} (contact text PRIMARY KEY, sent_at timestamptz NOT NULL"
        " DEFAULT clock_timestamp())",
    )
    await execute(sessions, "ANALYZE")


async def wait_until(
    sessions: SessionFactory, sql: str, expected: int, what: str, within: float
) -> None:
    began = time.perf_counter()
    last_log = began
    while True:
        found = int(await scalar(sessions, sql) or 0)
        if found >= expected:
            return
        now = time.perf_counter()
        if now - began > within:
            raise TimeoutError(f"{what}: only {found:,} of {expected:,} after {within:.0f} s")
        if now - last_log > 30:
            log(f"  {what}: {found:,} of {expected:,} after {now - began:.0f} s")
            last_log = now
        await asyncio.sleep(1)


async def bare_side(
    sessions: SessionFactory, client: Client, contacts: int, concurrency: int, within: float
) -> dict[str, Any]:
    names = [f"b{i}" for i in range(1, contacts + 1)]

    async def start(contact: str) -> None:
        await client.start_workflow(
            BARE_WORKFLOW, contact, id=f"bare-broadcast-{contact}", task_queue=BARE_QUEUE
        )

    began = time.perf_counter()
    calls = await run_pool(names, concurrency, start)
    started = time.perf_counter() - began
    await wait_until(
        sessions, f"SELECT count(*) FROM {SENDS_TABLE}", contacts, "bare sends", within
    )
    seconds = float(
        await scalar(
            sessions,
            f"SELECT extract(epoch FROM max(sent_at) - min(sent_at)) FROM {SENDS_TABLE}",
        )
    )
    total = time.perf_counter() - began
    return {
        "contacts": contacts,
        "failed_starts": len(calls.errors),
        "starts_seconds": round(started, 1),
        "seconds_to_last_send": round(total, 1),
        "first_to_last_send_seconds": round(seconds, 1),
        "sends_per_second": round(contacts / total, 1),
    }


async def all_asleep(sessions: SessionFactory, contacts: int, within: float) -> None:
    await wait_until(
        sessions,
        "SELECT count(*) FROM enrollments WHERE current_step = 'wait_day'",
        contacts,
        "enrollments asleep",
        within,
    )


async def draft(http: httpx.AsyncClient, journey: dict[str, Any]) -> None:
    answer = await http.post("/v1/journeys", json=journey)
    if answer.status_code != 201:
        raise RuntimeError(f"draft: {answer.status_code} {answer.text}")


async def publish(http: httpx.AsyncClient, journey: dict[str, Any]) -> None:
    answer = await http.post(f"/v1/journeys/{journey['key']}/publish")
    if answer.status_code not in (200, 201):
        raise RuntimeError(f"publish: {answer.status_code} {answer.text}")


async def holding_side(
    sessions: SessionFactory, http: httpx.AsyncClient, contacts: int, within: float
) -> dict[str, Any]:
    """`--pause-only`: the holding journey published, timed until everyone sleeps in its wait."""
    await draft(http, HOLDING)
    began = time.perf_counter()
    await publish(http, HOLDING)
    await all_asleep(sessions, contacts, within)
    seconds = time.perf_counter() - began
    return {
        "contacts": contacts,
        "seconds_until_asleep": round(seconds, 1),
        "enrollments_per_second": round(contacts / seconds, 1),
    }


async def nurture_side(
    sessions: SessionFactory, http: httpx.AsyncClient, contacts: int, within: float
) -> dict[str, Any]:
    await draft(http, JOURNEY)
    began_db = await scalar(sessions, "SELECT clock_timestamp()")
    began = time.perf_counter()
    await publish(http, JOURNEY)
    await wait_until(
        sessions,
        "SELECT count(*) FROM messages WHERE status IN ('sent', 'skipped', 'failed')",
        contacts,
        "Nurture sends",
        within,
    )
    total = time.perf_counter() - began
    last = await scalar(
        sessions,
        "SELECT extract(epoch FROM max(sent_at) - :began) FROM messages",
        began=began_db,
    )
    sent = int(await scalar(sessions, "SELECT count(*) FROM messages WHERE status = 'sent'"))
    await all_asleep(sessions, contacts, within)
    return {
        "contacts": contacts,
        "sent": sent,
        "seconds_to_last_send": round(float(last), 1),
        "seconds_until_seen": round(total, 1),
        "sends_per_second": round(contacts / float(last), 1),
    }


async def pause_resume(
    sessions: SessionFactory, http: httpx.AsyncClient, client: Client
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for action in ("pause", "resume"):
        began = time.perf_counter()
        answer = await http.post(f"/v1/journeys/{JOURNEY['key']}/{action}")
        if answer.status_code != 200:
            raise RuntimeError(f"{action}: {answer.status_code} {answer.text}")
        result[action] = {
            "seconds": round(time.perf_counter() - began, 1),
            "signalled": answer.json()["enrollments_signalled"],
        }
        log(f"  {action} by batch: {result[action]}")
    journey_id = await scalar(
        sessions, "SELECT id FROM journeys WHERE key = :key", key=JOURNEY["key"]
    )
    began = time.perf_counter()
    signalled = await signal_journey_enrollments(sessions, client, journey_id, "resume")
    result["resume_one_by_one"] = {
        "seconds": round(time.perf_counter() - began, 1),
        "signalled": signalled,
    }
    log(f"  resume one by one from this process: {result['resume_one_by_one']}")
    return result


async def run(options: argparse.Namespace) -> dict[str, Any]:
    os.environ["NURTURE_BULK_CONCURRENCY"] = str(options.bulk_concurrency)  # the worker's
    with tempfile.TemporaryDirectory(prefix="nurture-bench-broadcast-") as tmp:
        root = Path(tmp)
        async with embedded_postgres(root) as (database_url, postgres_pid):
            await upgrade_async(database_url)
            engine = create_engine(database_url)
            sessions = session_factory(engine)
            try:
                async with dev_server(root) as (env, temporal_pid):
                    return await _with_stack(
                        options, root, database_url, sessions, env.client,
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
    pids: dict[str, int],
) -> dict[str, Any]:
    address = client.service_client.config.target_host
    log(f"preparing {options.contacts:,} contacts")
    await prepare(sessions, options.contacts)
    key = await create_api_key(sessions, "bench")
    environment = {
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": client.namespace,
        "TEMPORAL_TASK_QUEUE": TASK_QUEUE,
        "SECRET_KEY": secrets.token_urlsafe(32),
    }
    bare_argv = [
        sys.executable, "-m", "bench.bare_broadcast", "--database-url", database_url,
        "--temporal-address", address, "--task-queue", BARE_QUEUE,
    ]  # fmt: skip
    async with (
        worker_process(root, database_url, address, TASK_QUEUE) as worker_pid,
        ready_process(bare_argv, root / "bare-worker.log", "bare worker") as bare_pid,
        api_process(root, environment, free_port()) as (api_url, api_pid),
        httpx.AsyncClient(
            base_url=api_url, headers={"Authorization": f"Bearer {key.secret}"}, timeout=3600
        ) as http,
    ):
        meter = CpuMeter(
            [
                Component("worker", psutil.Process(worker_pid), tree=False),
                Component("bare_worker", psutil.Process(bare_pid), tree=False),
                Component("api", psutil.Process(api_pid), tree=False),
                Component("temporal", psutil.Process(pids["temporal"]), tree=False),
                Component("postgres", psutil.Process(pids["postgres"]), tree=True),
                Component("bench", psutil.Process(), tree=False),
            ]
        )
        result: dict[str, Any] = {"options": {k: str(v) for k, v in vars(options).items()}}
        with (
            RssSampler(worker_pid) as worker_rss,
            RssSampler(api_pid) as api_rss,
            RssSampler(pids["temporal"]) as server_rss,
            RssSampler(bare_pid) as bare_rss,
        ):
            if options.pause_only:
                log(f"holding {options.contacts:,} contacts in {HOLDING['key']}'s first wait")
                result["holding"] = await measured(
                    meter, "holding", options.contacts,
                    holding_side(sessions, http, options.contacts, options.within),
                )  # fmt: skip
            else:

                async def bare() -> dict[str, Any]:
                    log(f"bare: starting {options.contacts:,} BareBroadcast workflows")
                    return await measured(
                        meter, "bare", options.contacts,
                        bare_side(sessions, client, options.contacts, options.concurrency,
                                  options.within),
                    )  # fmt: skip

                async def nurture() -> dict[str, Any]:
                    log(f"Nurture: publishing {JOURNEY['key']} over {options.contacts:,} contacts")
                    return await measured(
                        meter, "Nurture", options.contacts,
                        nurture_side(sessions, http, options.contacts, options.within),
                    )  # fmt: skip

                # The side that runs second finds the first one's workflows on the server (its
                # SQLite one broadcast larger); a run of each order brackets the ratio.
                order = [("bare", bare), ("nurture", nurture)]
                if options.nurture_first:
                    order.reverse()
                for name, side in order:
                    result[name] = await side()
                result["order"] = [name for name, _ in order]
                result["ratio"] = round(
                    result["nurture"]["sends_per_second"] / result["bare"]["sends_per_second"], 3
                )
            if not options.no_pause:
                result["pause_resume"] = await pause_resume(sessions, http, client)
            result["rss_mb"] = {
                name: {"peak": round(s.peak / MB, 1), "last": round(s.sample() / MB, 1)}
                for name, s in (
                    ("worker", worker_rss),
                    ("api", api_rss),
                    ("temporal_server", server_rss),
                    ("bare_worker", bare_rss),
                )
            }
    return result


async def measured(
    meter: CpuMeter, name: str, contacts: int, side: Awaitable[dict[str, Any]]
) -> dict[str, Any]:
    """What `side` reports, with the CPU each process spent on it per contact."""
    cpu = meter.snapshot()
    found = await side
    found["cpu_ms_per_contact"] = _per(meter, cpu, contacts)
    log(f"{name}: {found}")
    return found


def _per(meter: CpuMeter, before: dict[str, float], count: int) -> dict[str, float]:
    return {k: round(1000 * v / count, 2) for k, v in meter.spent(before, meter.snapshot()).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.broadcast", description=__doc__)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64, help="bare starts in flight (64)")
    parser.add_argument(
        "--bulk-concurrency", type=int, default=20, help="NURTURE_BULK_CONCURRENCY (20)"
    )
    parser.add_argument(
        "--nurture-first",
        action="store_true",
        help="run Nurture's side before the bare one (the default runs bare first)",
    )
    parser.add_argument("--within", type=float, default=6 * 3600, help="give up after (s)")
    # The pause alone, or everything but the pause: not both.
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--pause-only",
        action="store_true",
        help="no bare side and no send: hold the contacts in a wait, then pause and resume",
    )
    scope.add_argument(
        "--no-pause",
        action="store_true",
        help="stop after the sends: no pause and resume (measured alone by --pause-only)",
    )
    parser.add_argument(
        "--output", type=Path, default=Path(tempfile.gettempdir()) / "nurture-bench-broadcast.json"
    )
    options = parser.parse_args(argv)
    began = time.monotonic()
    result = asyncio.run(run(options))
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(result, indent=2) + "\n")
    pr = result.get("pause_resume")
    if options.pause_only:
        held = result["holding"]
        head = (
            f"pause and resume of {options.contacts:,} enrollments asleep in a wait:\n"
            f"  enrolled           {held['seconds_until_asleep']:>8.1f} s from publish until"
            f" all asleep ({held['enrollments_per_second']:.1f}/s)\n"
        )
        cpu = f"  CPU ms per contact: {held['cpu_ms_per_contact']}\n"
    else:
        bare, ours = result["bare"], result["nurture"]
        head = (
            f"broadcast to {options.contacts:,} contacts (send one email, wait a day):\n"
            f"  bare Temporal      {bare['seconds_to_last_send']:>8.1f} s to the last send"
            f"  ({bare['sends_per_second']:.1f}/s)\n"
            f"  Nurture            {ours['seconds_to_last_send']:>8.1f} s from publish to the"
            f" last email sent ({ours['sends_per_second']:.1f}/s; {ours['sent']:,} sent)\n"
            f"  Nurture / bare     {result['ratio']:>8.1%}\n"
        )
        cpu = (
            f"  CPU ms per contact: bare {bare['cpu_ms_per_contact']};"
            f" Nurture {ours['cpu_ms_per_contact']}\n"
        )
    paused = (
        ""
        if pr is None
        else f"  pause (batch)      {pr['pause']['seconds']:>8.1f} s, {pr['pause']['signalled']:,}"
        f" signalled\n"
        f"  resume (batch)     {pr['resume']['seconds']:>8.1f} s, {pr['resume']['signalled']:,}"
        f" signalled\n"
        f"  resume one by one  {pr['resume_one_by_one']['seconds']:>8.1f} s\n"
    )
    print(
        head
        + paused
        + f"  RSS MB (peak/last): {result['rss_mb']}\n"
        + cpu
        + f"JSON: {options.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
