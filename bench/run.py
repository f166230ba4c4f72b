"""Throughput of the API against bare Temporal calls, and the worker's memory, in one run.

    .venv/bin/python -m bench.run                  # full size: about 25 minutes on 2 cores
    .venv/bin/python -m bench.run --quick          # a smoke run, about 4 minutes
    .venv/bin/python -m bench.run --check          # exit 1 when a target is missed

Everything runs on this machine from a fresh temporary directory: embedded PostgreSQL, one
Temporal dev server (the pip binary), the worker and the API in processes of their own. It
measures (a) contacts enrolled per second through POST /v1/enrollments against the same
number of bare `client.start_workflow` calls; (b) events per second through POST /v1/events
to enrollments waiting for them against bare `handle.signal("event", ...)`, and (b2) the same
events `--event-batch` to a POST /v1/events/batch (reported, not judged); (c) the worker's RSS
with `--asleep` enrollments asleep. (a) and (b) run with the worker running (judged) and with it
stopped while calls are timed (a diagnostic of the request path alone).
docs/benchmarks.md explains the method and the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, TypeVar

import psutil
from sqlalchemy import text
from temporalio.client import Client

from api.schemas.events import MAX_BATCH_EVENTS
from bench.stack import (
    MB,
    Component,
    CpuMeter,
    RssSampler,
    api_process,
    dev_server,
    embedded_postgres,
    free_port,
    log,
    vm_hwm_bytes,
    worker_process,
)
from bench.workload import (
    EVENT_JOURNEY,
    SLEEP_JOURNEY,
    ApiClient,
    Published,
    Timed,
    api_enroll,
    api_event,
    api_events,
    bare_signal,
    bare_start,
    count_enrollments,
    make_contacts,
    make_pending_enrollments,
    publish_journey,
    run_batches,
    run_pool,
    wait_for_count,
)
from nurture.apikeys import create_api_key
from nurture.binaries import find_binary
from nurture.db.engine import SessionFactory, create_engine, session_factory
from nurture.db.migrate import upgrade_async
from nurture.db.models import Enrollment

A = TypeVar("A")
B = TypeVar("B")

ENROLL_TARGET = 0.80  # API rate / bare rate
EVENT_TARGET = 0.70
RSS_TARGET_MB = 300.0
TASK_QUEUE = "bench"


@dataclass(frozen=True)
class Options:
    enrollments: int
    events: int
    asleep: int
    concurrency: int
    warmup: int
    settle: float
    modes: tuple[str, ...]  # "running" and/or "paused": the worker during the timed calls
    max_cached_workflows: int | None  # None: as production sets it (settings)
    output: Path
    check: bool
    also: tuple[str, ...] = ()  # other modes run after this one (ALSO)
    client: str = "aiohttp"  # the load generator's HTTP client for the API side
    also_args: dict[str, list[str]] = field(default_factory=dict)  # per mode of `also`
    event_batch: int = 100  # (b2): events per POST /v1/events/batch; 0: not measured
    cycles: int = 1  # ABBA cycles per mode: more, shorter rounds average over the server's drift

    @property
    def batches_in_flight(self) -> int:
        """(b2)'s requests in flight: each carries `event_batch` events the API signals at once."""
        return max(1, self.concurrency // 8)

    @property
    def judged_mode(self) -> str:
        """The mode the targets are checked on: the worker running, as the product runs."""
        return "running" if "running" in self.modes else self.modes[0]


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    side: str  # "api" | "bare"
    count: int
    seconds: float  # first call sent .. last answer received
    drain_seconds: float  # then, until Postgres shows the worker finished with all of them
    latencies: list[float] = field(repr=False)
    cpu_seconds: dict[str, float]  # per process, over seconds + drain_seconds
    errors: list[str] = field(repr=False)  # calls that failed (not counted in `count`)
    # per process, over the calls alone: in mode "paused" this is the request path by itself
    calls_cpu_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Side:
    side: str
    count: int
    failed: int
    seconds: float
    per_second: float
    end_to_end_per_second: float  # counting until the worker is done with them too
    latency_ms: dict[str, float]
    cpu_ms_per_op: dict[str, float]
    calls_cpu_ms_per_op: dict[str, float]  # over the calls alone, without the drain

    @classmethod
    def of(cls, side: str, rounds: Sequence[Round]) -> Side:
        mine = [r for r in rounds if r.side == side]
        count = sum(r.count for r in mine)
        seconds = sum(r.seconds for r in mine)
        e2e = sum(r.seconds + r.drain_seconds for r in mine)
        latencies = sorted(x for r in mine for x in r.latencies)
        cpu: dict[str, float] = {}
        calls_cpu: dict[str, float] = {}
        for r in mine:
            for name, spent in r.cpu_seconds.items():
                cpu[name] = cpu.get(name, 0.0) + spent
            for name, spent in r.calls_cpu_seconds.items():
                calls_cpu[name] = calls_cpu.get(name, 0.0) + spent
        return cls(
            side=side,
            count=count,
            failed=sum(len(r.errors) for r in mine),
            seconds=round(seconds, 3),
            per_second=round(count / seconds, 1),
            end_to_end_per_second=round(count / e2e, 1),
            latency_ms={
                "p50": _ms(_quantile(latencies, 0.50)),
                "p95": _ms(_quantile(latencies, 0.95)),
                "p99": _ms(_quantile(latencies, 0.99)),
            },
            cpu_ms_per_op={name: _ms(spent / max(count, 1)) for name, spent in cpu.items()},
            calls_cpu_ms_per_op={
                name: _ms(spent / max(count, 1)) for name, spent in calls_cpu.items()
            },
        )


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _quantile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class Comparison:
    name: str
    mode: str  # the worker during the timed calls: "running" or "paused" (SIGSTOP)
    judged: bool  # whether the targets are checked on this mode
    api: Side
    bare: Side
    ratio: float
    target: float
    passed: bool  # the ratio meets the target and no call failed
    rounds: list[dict[str, Any]]
    errors: dict[str, int]  # distinct failures (first 120 characters) and how often

    @classmethod
    def of(
        cls, name: str, mode: str, judged: bool, rounds: Sequence[Round], target: float
    ) -> Comparison:
        api, bare = Side.of("api", rounds), Side.of("bare", rounds)
        ratio = api.per_second / bare.per_second if bare.per_second else 0.0
        errors = Counter(f"{r.side}: {e[:120]}" for r in rounds for e in r.errors)
        return cls(
            name=name,
            mode=mode,
            judged=judged,
            api=api,
            bare=bare,
            ratio=round(ratio, 3),
            target=target,
            passed=ratio >= target and not errors,
            rounds=[
                {
                    "side": r.side,
                    "count": r.count,
                    "seconds": round(r.seconds, 3),
                    "per_second": round(r.count / r.seconds, 1) if r.seconds else 0.0,
                    "drain_seconds": round(r.drain_seconds, 3),
                    "failed": len(r.errors),
                    "cpu_seconds": {k: round(v, 2) for k, v in r.cpu_seconds.items()},
                }
                for r in rounds
            ],
            errors=dict(errors.most_common()),
        )


@dataclass(frozen=True)
class Memory:
    asleep: int
    temporal_running: int
    worker_rss_mb_idle: float  # before any workflow ran
    worker_rss_mb_asleep: float  # the last sample of the settle window
    worker_rss_mb_asleep_max: float  # the highest sample of the settle window
    worker_rss_mb_peak_sampled: float  # the highest sample of the whole run
    worker_rss_mb_peak_hwm: float | None  # the kernel's high-water mark (VmHWM)
    api_rss_mb_peak_sampled: float
    top_up_per_second: float | None  # start rate of the enrollments that filled up to `asleep`
    top_up_failed: int
    target_mb: float
    passed: bool


# --- the benchmark -------------------------------------------------------------------------------


def _abba_halves(first: int, n: int, cycles: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The n items from `first` cut into `cycles` cycles of two halves (index ranges): each
    cycle's first half goes to a bare round then an API round, its second to an API round then
    a bare round. The sizes differ by one at most; every item is used once."""
    bounds = [first + n * k // (2 * cycles) for k in range(2 * cycles + 1)]
    return [
        ((bounds[2 * c], bounds[2 * c + 1]), (bounds[2 * c + 1], bounds[2 * c + 2]))
        for c in range(cycles)
    ]


@dataclass
class Bench:
    options: Options
    sessions: SessionFactory
    client: Client
    http: ApiClient
    meter: CpuMeter
    worker: psutil.Process
    sleep: Published
    event: Published
    problems: list[str] = field(default_factory=list)  # what went wrong, for the report

    def drain_timeout(self, count: int) -> float:
        return 120 + count / 10  # generous: the worker finishes far faster than 10/s

    async def drain(
        self, journey: Published, status: str, step: str | None, before: int, added: int
    ) -> tuple[float, int]:
        """Wait until the worker has brought `added` more enrollments to `status` (and `step`);
        return the seconds waited and the new total. If it does not within the time allowed,
        the shortfall is recorded as a problem of the run, and the run goes on from the total
        found (so that later rounds are not blamed for it)."""
        within = self.drain_timeout(added)
        try:
            waited = await wait_for_count(
                self.sessions, journey.journey_id, status, before + added, step, within
            )
            return waited, before + added
        except TimeoutError as err:
            found = await count_enrollments(self.sessions, journey.journey_id, status, step)
            self.problems.append(f"{journey.key}: {err}")
            log(f"  PROBLEM: {err}")
            return within, found

    def items_per_side(self, n: int) -> int:
        return self.options.warmup + n * len(self.options.modes)

    async def compare(
        self,
        name: str,
        target: float,
        n: int,
        api_items: Sequence[A],
        bare_items: Sequence[B],
        api_call: Callable[[A], Awaitable[None]],
        bare_call: Callable[[B], Awaitable[None]],
        drained: Callable[[int], Awaitable[float]],
        api_batch: Callable[[Sequence[A]], Awaitable[None]] | None = None,
    ) -> list[Comparison]:
        """A warm-up of each side (not reported); then, for each mode, `options.cycles`
        cycles of ABBA rounds (bare, api, api, bare) of n / (2 x cycles) calls each, so that a
        drift of the server over the run (its SQLite file grows, work piles up while the worker
        is paused) weighs on both sides alike; each side's rate is over all its rounds. Each
        round ends when the worker is done with all it was given, so that rounds do not overlap.
        In mode "paused" the worker process is stopped (SIGSTOP) while the calls are timed and
        continued before the drain.

        With `api_batch`, the API side sends `options.event_batch` items per call, an eighth
        of the concurrency in flight (each batch is signalled concurrently by the API); its
        figures are per item, as the bare side's."""
        w, c = self.options.warmup, self.options.concurrency

        async def api_round(items: Sequence[A]) -> Timed:
            if api_batch is None:
                return await run_pool(items, c, api_call)
            return await run_batches(
                items, self.options.event_batch, self.options.batches_in_flight, api_batch
            )

        async def round_of(side: str, items: Sequence[Any]) -> Timed:
            return await (run_pool(items, c, bare_call) if side == "bare" else api_round(items))

        warm = [await round_of("bare", bare_items[:w]), await round_of("api", api_items[:w])]
        _log_errors("warm-up", [e for t in warm for e in t.errors])
        await drained(sum(t.count for t in warm))
        comparisons = []
        for i, mode in enumerate(self.options.modes):
            plan: list[tuple[str, Sequence[Any]]] = []
            for a, b in _abba_halves(w + i * n, n, self.options.cycles):
                plan += [
                    ("bare", bare_items[a[0] : a[1]]),
                    ("api", api_items[a[0] : a[1]]),
                    ("api", api_items[b[0] : b[1]]),
                    ("bare", bare_items[b[0] : b[1]]),
                ]
            rounds = []
            for side, items in plan:
                before = self.meter.snapshot()
                if mode == "paused":
                    self.worker.suspend()
                try:
                    timed = await round_of(side, items)
                    calls_spent = CpuMeter.spent(before, self.meter.snapshot())
                finally:
                    if mode == "paused":
                        self.worker.resume()
                drain = await drained(timed.count)
                spent = CpuMeter.spent(before, self.meter.snapshot())
                rounds.append(
                    Round(
                        side,
                        timed.count,
                        timed.seconds,
                        drain,
                        timed.latencies,
                        spent,
                        timed.errors,
                        calls_spent,
                    )
                )
                log(
                    f"  worker {mode:7} {side:4} {timed.count} in {timed.seconds:.2f} s "
                    f"= {timed.count / timed.seconds:.1f}/s (worker done {drain:.2f} s later)"
                )
                _log_errors(side, timed.errors)
            judged = mode == self.options.judged_mode and api_batch is None
            comparisons.append(Comparison.of(name, mode, judged, rounds, target))
        return comparisons

    async def enroll_rate(self) -> list[Comparison]:
        journey, n = self.sleep, self.options.enrollments
        log(
            f"(a) enrollments: {n} through the API, {n} bare starts, concurrency {self.options.concurrency}"
        )
        per_side = self.items_per_side(n)
        api_contacts = await make_contacts(self.sessions, per_side, "enroll-api")
        bare_rows = await make_pending_enrollments(
            self.sessions, journey, await make_contacts(self.sessions, per_side, "enroll-bare")
        )
        asleep = 0

        async def drained(count: int) -> float:
            nonlocal asleep
            waited, asleep = await self.drain(journey, "active", journey.first_step, asleep, count)
            return waited

        async def api_call(contact_id: uuid.UUID) -> None:
            await api_enroll(self.http, journey.key, contact_id)

        async def bare_call(row: Enrollment) -> None:
            await bare_start(self.client, TASK_QUEUE, journey, row)

        return await self.compare(
            "enrollments", ENROLL_TARGET, n, api_contacts, bare_rows, api_call, bare_call, drained
        )

    async def event_rate(self, batch: int = 1) -> list[Comparison]:
        """(b) one event per request; with `batch`, (b2): `batch` events per request."""
        journey, n = self.event, self.options.events
        c = self.options.concurrency
        if batch == 1:
            log(f"(b) events: {n} through the API, {n} bare signals, concurrency {c}")
        else:
            log(
                f"(b2) events: {n} through the API in batches of {batch} "
                f"({self.options.batches_in_flight} in flight), {n} bare signals, concurrency {c}"
            )
        per_side = self.items_per_side(n)
        contacts = await make_contacts(
            self.sessions, 2 * per_side, "event" if batch == 1 else "event-batch"
        )
        rows = await make_pending_enrollments(self.sessions, journey, contacts)

        async def start(row: Enrollment) -> None:
            await bare_start(self.client, TASK_QUEUE, journey, row)

        setup = await run_pool(rows, self.options.concurrency, start)
        if setup.errors:
            raise RuntimeError(f"could not start the enrollments to signal: {setup.errors[:3]}")
        waited = await wait_for_count(
            self.sessions,
            journey.journey_id,
            "active",
            len(rows),
            step=journey.first_step,
            within=self.drain_timeout(len(rows)),
        )
        log(f"  {len(rows)} enrollments wait for the event ({waited:.1f} s after the starts)")
        # (b2) runs after (b) on the same journey: count from what (b) completed.
        completed = await count_enrollments(self.sessions, journey.journey_id, "completed")

        async def drained(count: int) -> float:
            nonlocal completed
            waited, completed = await self.drain(journey, "completed", None, completed, count)
            return waited

        async def api_call(contact_id: uuid.UUID) -> None:
            await api_event(self.http, contact_id)

        async def api_batch(contact_ids: Sequence[uuid.UUID]) -> None:
            await api_events(self.http, contact_ids)

        async def bare_call(contact_id: uuid.UUID) -> None:
            await bare_signal(self.client, journey.key, contact_id)

        return await self.compare(
            "events" if batch == 1 else "events_batched",
            EVENT_TARGET,
            n,
            contacts[:per_side],
            contacts[per_side:],
            api_call,
            bare_call,
            drained,
            api_batch if batch > 1 else None,
        )

    async def memory(self, worker: RssSampler, api: RssSampler, idle_rss: int) -> Memory:
        journey, target = self.sleep, self.options.asleep
        asleep = await count_enrollments(
            self.sessions, journey.journey_id, "active", journey.first_step
        )
        log(f"(c) worker memory: {asleep} enrollments asleep, enrolling up to {target}")
        top_up_rate, top_up_failed = None, 0
        if target > asleep:
            # Rows committed, then the API's own start_workflow call: what the worker is given
            # is the same as through the API, and (c) does not depend on (a)'s findings.
            rows = await make_pending_enrollments(
                self.sessions,
                journey,
                await make_contacts(self.sessions, target - asleep, "asleep"),
            )

            async def enroll(row: Enrollment) -> None:
                await bare_start(self.client, TASK_QUEUE, journey, row)

            timed = await run_pool(rows, self.options.concurrency, enroll)
            top_up_rate, top_up_failed = round(timed.count / timed.seconds, 1), len(timed.errors)
            _log_errors("top-up", timed.errors)
            await self.drain(journey, "active", journey.first_step, asleep, timed.count)
        asleep = await count_enrollments(
            self.sessions, journey.journey_id, "active", journey.first_step
        )
        running = await self._running_workflows(expected=asleep)
        log(
            f"  {asleep} asleep ({running} running in Temporal); settling {self.options.settle:.0f} s"
        )
        samples = []
        settle_end = time.monotonic() + self.options.settle
        while time.monotonic() < settle_end:
            samples.append(worker.sample())
            await asyncio.sleep(0.5)
        samples.append(worker.sample())
        hwm = vm_hwm_bytes(worker.process.pid)
        return Memory(
            asleep=asleep,
            temporal_running=running,
            worker_rss_mb_idle=round(idle_rss / MB, 1),
            worker_rss_mb_asleep=round(samples[-1] / MB, 1),
            worker_rss_mb_asleep_max=round(max(samples) / MB, 1),
            worker_rss_mb_peak_sampled=round(worker.peak / MB, 1),
            worker_rss_mb_peak_hwm=round(hwm / MB, 1) if hwm else None,
            api_rss_mb_peak_sampled=round(api.peak / MB, 1),
            top_up_per_second=top_up_rate,
            top_up_failed=top_up_failed,
            target_mb=RSS_TARGET_MB,
            passed=samples[-1] / MB <= RSS_TARGET_MB and asleep >= target,
        )

    async def _running_workflows(self, expected: int) -> int:
        """Temporal's own count (visibility is eventually consistent: give it a moment)."""
        deadline = time.monotonic() + 30
        while True:
            running = (await self.client.count_workflows('ExecutionStatus="Running"')).count
            if running == expected or time.monotonic() > deadline:
                return running
            await asyncio.sleep(0.5)


def _log_errors(what: str, errors: Sequence[str]) -> None:
    if errors:
        common = Counter(e[:160] for e in errors).most_common(3)
        log(f"  {what}: {len(errors)} calls FAILED, e.g. {common}")


async def benchmark(options: Options) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nurture-bench-") as tmp:
        root = Path(tmp)
        log(f"starting PostgreSQL and the Temporal dev server under {root}")
        try:
            async with embedded_postgres(root) as (database_url, postgres_pid):
                await upgrade_async(database_url)
                engine = create_engine(database_url)
                try:
                    async with dev_server(root) as (env, temporal_pid):
                        return await _with_processes(
                            options, root, database_url, session_factory(engine), env.client,
                            {"temporal": temporal_pid, "postgres": postgres_pid},
                        )  # fmt: skip
                finally:
                    await engine.dispose()
        finally:
            # The worker's and the API's logs outlive the temporary directory.
            logs = options.output.with_name(options.output.stem + "-logs")
            await asyncio.to_thread(_keep_logs, root, logs)
            log(f"worker and API logs: {logs}")


def _keep_logs(root: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for path in root.glob("*.log"):
        shutil.copy(path, destination / path.name)


async def _with_processes(
    options: Options,
    root: Path,
    database_url: str,
    sessions: SessionFactory,
    client: Client,
    pids: dict[str, int],
) -> dict[str, Any]:
    address = client.service_client.config.target_host
    sleep = await publish_journey(sessions, SLEEP_JOURNEY)
    event = await publish_journey(sessions, EVENT_JOURNEY)
    key = await create_api_key(sessions, "bench")
    environment = {
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": client.namespace,
        "TEMPORAL_TASK_QUEUE": TASK_QUEUE,
        "SECRET_KEY": secrets.token_urlsafe(32),  # the API refuses to start without one
    }
    async with (
        worker_process(
            root, database_url, address, TASK_QUEUE, options.max_cached_workflows
        ) as worker_pid,
        api_process(root, environment, free_port()) as (api_url, api_pid),
        ApiClient(api_url, key.secret, options.concurrency, options.client) as http,
    ):
        log(f"worker pid {worker_pid}, API pid {api_pid} at {api_url}")
        meter = CpuMeter(
            [
                Component("bench", psutil.Process(), tree=False),
                Component("api", psutil.Process(api_pid), tree=False),
                Component("worker", psutil.Process(worker_pid), tree=False),
                Component("temporal", psutil.Process(pids["temporal"]), tree=False),
                Component("postgres", psutil.Process(pids["postgres"]), tree=True),
            ]
        )
        worker = psutil.Process(worker_pid)
        bench = Bench(options, sessions, client, http, meter, worker, sleep, event)
        result: dict[str, Any] = {
            "machine": await _machine(sessions),
            "options": {
                k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()
            },
            "partial": True,  # until the last phase is done; written after each phase
        }
        with RssSampler(worker_pid) as worker_rss, RssSampler(api_pid) as api_rss:
            await asyncio.sleep(2)
            idle = worker_rss.sample()
            enrollments = await bench.enroll_rate()
            result["enrollments"] = {c.mode: asdict(c) for c in enrollments}
            await _save(options.output, result)
            events = await bench.event_rate()
            result["events"] = {c.mode: asdict(c) for c in events}
            await _save(options.output, result)
            if options.event_batch > 1:
                batched = await bench.event_rate(options.event_batch)
                result["events_batched"] = {c.mode: asdict(c) for c in batched}
                await _save(options.output, result)
            memory = await bench.memory(worker_rss, api_rss, idle)
        result["memory"] = asdict(memory)
        result["problems"] = bench.problems
        result["passed"] = (
            all(c.passed for c in [*enrollments, *events] if c.judged)
            and memory.passed
            and not bench.problems
        )
        result["partial"] = False
        return result


async def _save(path: Path, result: dict[str, Any]) -> None:
    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")

    await asyncio.to_thread(write)


async def _machine(sessions: SessionFactory) -> dict[str, Any]:
    async with sessions() as session:
        postgres = str(await session.scalar(text("SHOW server_version")))
    temporal = (
        await asyncio.to_thread(
            subprocess.run,
            [find_binary("temporal"), "--version"],
            capture_output=True,
            text=True,
            check=False,
        )
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "temporalio": package_version("temporalio"),
        "temporal_cli": temporal,
        "postgres": postgres,
    }


# --- report --------------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> str:
    m = result["memory"]
    comparisons = [
        (label, c)
        for label, key in (
            ("(a) enrollments/s", "enrollments"),
            ("(b) events/s", "events"),
            (f"(b2) events/s, {result['options']['event_batch']} a request", "events_batched"),
        )
        for c in result.get(key, {}).values()
    ]
    verdict = {True: "PASS", False: "FAIL"}
    lines = [
        f"Nurture benchmark: {result['machine']['cpus']} CPUs, "
        f"concurrency {result['options']['concurrency']}",
        "",
        f"{'':48}{'API':>9}{'bare':>9}{'API/bare':>10}{'target':>9}  result",
    ]
    for label, c in comparisons:
        outcome = verdict[c["passed"]] if c["judged"] else "(diagnostic)"
        failed = c["api"]["failed"] + c["bare"]["failed"]
        lines.append(
            f"{label + ', worker ' + c['mode']:48}{c['api']['per_second']:>9.1f}"
            f"{c['bare']['per_second']:>9.1f}{c['ratio']:>10.1%}"
            f"{'>= ' + format(c['target'], '.0%'):>9}  {outcome}"
            + (f"  ({failed} calls failed)" if failed else "")
        )
    lines.append(
        f"{'(c) worker RSS, MB, ' + format(m['asleep'], ',') + ' asleep':48}"
        f"{m['worker_rss_mb_asleep']:>9.1f}{'':>9}{'':>10}"
        f"{'<= ' + format(m['target_mb'], '.0f'):>9}  {verdict[m['passed']]}"
    )
    lines += [
        "",
        "details (CPU: ms per call, all processes, over the calls and the worker's drain;",
        "         calls only: over the calls alone, i.e. the request path where the worker is paused):",
    ]
    for _, c in comparisons:
        for side in ("api", "bare"):
            s = c[side]
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in s["cpu_ms_per_op"].items())
            lines.append(
                f"  {c['name']:14} {c['mode']:7} {side:4} {s['count']:>5} ok {s['failed']:>4} failed"
                f" {s['seconds']:>7.1f} s {s['per_second']:>6.1f}/s"
                f" (end to end {s['end_to_end_per_second']:.1f}/s);"
                f" latency p50/p95/p99 {s['latency_ms']['p50']:.0f}/{s['latency_ms']['p95']:.0f}/"
                f"{s['latency_ms']['p99']:.0f} ms; CPU {cpu}"
            )
            calls = ", ".join(f"{k} {v:.1f}" for k, v in s["calls_cpu_ms_per_op"].items())
            lines.append(f"  {'':14} {'':7} {'':4} calls only: CPU {calls}")
        for error, times in c["errors"].items():
            lines.append(f"  {c['name']:14} {c['mode']:7} FAILED {times} times: {error}")
    lines.append(
        f"  worker RSS: idle {m['worker_rss_mb_idle']} MB; {m['asleep']:,} asleep "
        f"{m['worker_rss_mb_asleep']} MB (settle max {m['worker_rss_mb_asleep_max']}); "
        f"peak sampled {m['worker_rss_mb_peak_sampled']} MB, VmHWM {m['worker_rss_mb_peak_hwm']} MB;"
        f" Temporal running {m['temporal_running']:,}; API RSS peak {m['api_rss_mb_peak_sampled']} MB"
    )
    lines += [f"  PROBLEM: {problem}" for problem in result["problems"]]
    return "\n".join(lines)


def parse(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--enrollments", type=int, help="timed enrollments per side (2000)")
    parser.add_argument("--events", type=int, help="timed events per side (2000)")
    parser.add_argument("--asleep", type=int, help="enrollments asleep for (c) (10000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (32)")
    parser.add_argument("--warmup", type=int, help="untimed calls per side first (n/10, 10..200)")
    parser.add_argument("--settle", type=float, help="seconds to watch the worker's RSS (10)")
    parser.add_argument(
        "--modes",
        default="running,paused",
        help="the worker while calls are timed: running (judged), paused (SIGSTOP, diagnostic)",
    )
    parser.add_argument(
        "--max-cached-workflows",
        type=int,
        help="override the worker cache size (default: as in production, WORKER_MAX_CACHED_WORKFLOWS)",
    )
    parser.add_argument(
        "--also",
        default="",
        help="then run these modes too, comma-separated: "
        + ", ".join(ALSO)
        + " (each at its full size; see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--also-args",
        action="append",
        default=[],
        metavar="MODE=ARGS",
        help="more arguments for a mode run by --also, e.g. --also-args 'broadcast=--contacts "
        "20000' (repeatable)",
    )
    parser.add_argument(
        "--client",
        choices=("aiohttp", "httpx"),
        default="aiohttp",
        help="the load generator's HTTP client for the API side (aiohttp)",
    )
    parser.add_argument(
        "--event-batch",
        type=int,
        default=100,
        help="(b2): events per POST /v1/events/batch against bare signals (100; 0: skip)",
    )
    parser.add_argument(
        "--cycles",
        type=int,
        default=1,
        help="ABBA cycles of rounds per mode (1): more, shorter rounds average over the "
        "server's drift during a run",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(tempfile.gettempdir()) / "nurture-bench.json",
        help="where to write the JSON result (%(default)s)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    enrollments = args.enrollments or (200 if quick else 2000)
    events = args.events or (200 if quick else 2000)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    also = tuple(m.strip() for m in args.also.split(",") if m.strip())
    if set(also) - set(ALSO):
        parser.error(f"--also takes {', '.join(ALSO)}, comma-separated")
    also_args: dict[str, list[str]] = {}
    for given in args.also_args:
        mode, _, words = given.partition("=")
        if mode not in also:
            parser.error(f"--also-args {given!r}: {mode!r} is not one of --also")
        also_args.setdefault(mode, []).extend(shlex.split(words))
    if args.event_batch < 0 or args.event_batch > MAX_BATCH_EVENTS:
        parser.error(f"--event-batch takes 0 to {MAX_BATCH_EVENTS}")
    if not modes or set(modes) - {"running", "paused"} or len(set(modes)) != len(modes):
        parser.error("--modes takes running, paused or both, comma-separated")
    if args.cycles < 1:
        parser.error("--cycles must be at least 1")
    for name, value in (("--enrollments", enrollments), ("--events", events)):
        if value < 2 * args.cycles:
            parser.error(
                f"{name} must be at least {2 * args.cycles} (two rounds per side and cycle)"
            )
    return Options(
        enrollments=enrollments,
        events=events,
        asleep=args.asleep if args.asleep is not None else (1000 if quick else 10_000),
        concurrency=args.concurrency,
        warmup=(
            args.warmup
            if args.warmup is not None
            else max(10, min(200, min(enrollments, events) // 10))
        ),
        settle=args.settle if args.settle is not None else (3.0 if quick else 10.0),
        modes=modes,
        max_cached_workflows=args.max_cached_workflows,
        output=args.output,
        check=args.check,
        also=also,
        also_args=also_args,
        client=args.client,
        event_batch=args.event_batch,
        cycles=args.cycles,
    )


# The other benchmark modes (issue 11), each a module of its own with its own stack, run after
# this one by `--also`, so that one command reports them all; their sizes here are the full ones.
ALSO: dict[str, list[str]] = {
    "history": ["-m", "bench.history"],
    "webhooks": ["-m", "bench.webhooks"],
    "sweep": ["-m", "bench.sweep"],
    "broadcast": ["-m", "bench.broadcast"],
    "floor": ["-m", "bench.api_floor"],
}


def run_also(
    names: Sequence[str], output: Path, extra: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """Run the named modes one after the other (never side by side: they would share the
    cores); each prints its own report and writes its JSON beside this run's."""
    results: dict[str, Any] = {}
    for name in names:
        json_path = output.with_name(f"{output.stem}-{name}.json")
        flag = "--json" if name == "history" else "--output"
        argv = [*ALSO[name], *extra.get(name, ()), flag, str(json_path)]
        log(f"also: python {shlex.join(argv)}")
        done = subprocess.run([sys.executable, *argv], cwd=Path(__file__).parent.parent)
        results[name] = (
            json.loads(json_path.read_text())
            if done.returncode == 0 and json_path.exists()
            else {"failed": done.returncode}
        )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    # Stopped from outside (`timeout`, kill): unwind as on Ctrl-C, so that the stack's
    # processes (a worker maybe paused, Postgres, the dev server) are stopped, not orphaned.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    began = time.monotonic()
    result = asyncio.run(benchmark(options))
    if options.also:
        result["also"] = run_also(options.also, options.output, options.also_args)
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    asyncio.run(_save(options.output, result))
    print(report(result))
    print(f"\nJSON result: {options.output} (whole run {result['wall_seconds']:.0f} s)")
    if options.check and not result["passed"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
