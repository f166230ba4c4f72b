"""The services of one benchmark run, each started fresh under a temporary directory.

Embedded PostgreSQL, ONE Temporal dev server (the pip-installed binary, WAL pragmas, a database
file as `nurture dev` keeps one), and the worker and the API each in a process of its own: the
worker so that its memory can be read alone, the API (uvicorn, one process, as `uvicorn
api.app:create_app --factory` runs it) so that it shares neither a GIL nor an event loop with
the load generator.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from nurture.binaries import find_binary
from nurture.embedded import start_embedded_postgres
from nurture.settings import DEFAULT_API_KEEP_ALIVE_SECONDS
from nurture.tracing import dev_server_flags

REPO = Path(__file__).resolve().parent.parent
WAL_PRAGMAS = ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"]
MB = 1_000_000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@asynccontextmanager
async def embedded_postgres(root: Path) -> AsyncIterator[tuple[str, int]]:
    """An embedded PostgreSQL under `root`: yields its asyncpg URL and the postmaster's pid."""
    server, url = await asyncio.to_thread(start_embedded_postgres, root / "postgres", "bench")
    try:
        pid = server.get_pid()
        assert isinstance(pid, int)
        yield url, pid
    finally:
        await asyncio.to_thread(server.cleanup)


@asynccontextmanager
async def dev_server(root: Path) -> AsyncIterator[tuple[WorkflowEnvironment, int]]:
    """One Temporal dev server from the pip binary: yields it and the server process's pid."""
    binary = find_binary("temporal")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    async with await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=binary,
        dev_server_database_filename=str(root / "temporal.db"),
        dev_server_extra_args=[*dev_server_flags(), *WAL_PRAGMAS],
    ) as env:
        started = [
            p
            for p in psutil.Process().children(recursive=True)
            if p.pid not in before and Path(p.exe()).name == Path(binary).name
        ]
        if len(started) != 1:
            raise RuntimeError(f"expected one temporal server process, found {started}")
        yield env, started[0].pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _stop(process: asyncio.subprocess.Process, name: str) -> None:
    if process.returncode is not None:
        log(f"{name} had already exited with {process.returncode}")
        return
    with suppress(ProcessLookupError):
        process.send_signal(signal.SIGCONT)  # a worker paused by SIGSTOP acts on nothing else
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), timeout=30)
    except TimeoutError:
        log(f"{name} did not stop within 30 s: killing it")
        process.kill()
        await process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@asynccontextmanager
async def worker_process(
    root: Path,
    database_url: str,
    temporal_address: str,
    task_queue: str,
    max_cached_workflows: int | None = None,
) -> AsyncIterator[int]:
    """`bench.worker_process` (the production `build_worker`): yields its pid once it polls."""
    log_path = root / "worker.log"
    argv = [
        sys.executable,
        "-m",
        "bench.worker_process",
        "--database-url",
        database_url,
        "--temporal-address",
        temporal_address,
        "--task-queue",
        task_queue,
    ]
    if max_cached_workflows is not None:
        argv += ["--max-cached-workflows", str(max_cached_workflows)]
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
        try:
            assert process.stdout is not None
            try:
                line = await asyncio.wait_for(process.stdout.readline(), timeout=120)
            except TimeoutError:
                line = b""
            if line.strip() != b"ready":
                raise RuntimeError(f"the worker did not start:\n{_tail(log_path)}")
            # Temporal's core logs to stdout: unread, the pipe fills (64 KB of warnings on a
            # loaded machine) and the worker's workflow thread blocks writing to it, so the
            # worker stops taking workflow tasks for good. Keep reading it, into the log.
            async with drain_stdout(process, log_path.with_suffix(".stdout.log")):
                yield process.pid
        finally:
            await _stop(process, "worker")


@asynccontextmanager
async def drain_stdout(process: asyncio.subprocess.Process, path: Path) -> AsyncIterator[None]:
    """Copy what the process writes to stdout into `path` for as long as the block runs."""

    async def copy() -> None:
        assert process.stdout is not None
        with path.open("ab") as out:
            while chunk := await process.stdout.read(65536):
                out.write(chunk)
                out.flush()

    task = asyncio.get_running_loop().create_task(copy())
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def api_process(
    root: Path, environment: Mapping[str, str], port: int
) -> AsyncIterator[tuple[str, int]]:
    """The API under uvicorn (one process, no access log): yields its base URL and pid."""
    log_path = root / "api.log"
    argv: Sequence[str] = [
        sys.executable,
        "-m",
        "uvicorn",
        "api.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--timeout-keep-alive",  # as `nurture api` does
        str(DEFAULT_API_KEEP_ALIVE_SECONDS),
    ]
    base_url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=REPO,
            env={**os.environ, **environment},
            stdout=log_file,
            stderr=log_file,
        )
        try:
            await wait_healthy(process, base_url, log_path)
            yield base_url, process.pid
        finally:
            await _stop(process, "api")


async def wait_healthy(process: asyncio.subprocess.Process, base_url: str, log: Path) -> None:
    """Until `GET /health` answers 200; raises with the log's tail if the process exits or
    two minutes pass."""
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                break
            try:
                if (await http.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{base_url} did not become healthy:\n{_tail(log)}")


# --- reading processes ---------------------------------------------------------------------------


def cpu_seconds(process: psutil.Process, with_children: bool) -> float:
    """CPU time (user + system) of a process; with its children for a process tree such as
    PostgreSQL's (live backends, plus those already reaped)."""
    try:
        times = process.cpu_times()
        total = times.user + times.system
        if with_children:
            total += times.children_user + times.children_system
            for child in process.children(recursive=True):
                with suppress(psutil.NoSuchProcess):
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
        return float(total)
    except psutil.NoSuchProcess:
        return 0.0


@dataclass(frozen=True)
class Component:
    name: str
    process: psutil.Process
    tree: bool  # count the CPU of its children too


class CpuMeter:
    """CPU seconds per component, to say where the time of a timed round went."""

    def __init__(self, components: Sequence[Component]) -> None:
        self.components = list(components)

    def snapshot(self) -> dict[str, float]:
        """CPU seconds of each component, and of everything else on the machine ("other"):
        the benchmark assumes an idle machine, and "other" shows when it was not."""
        spent = {c.name: cpu_seconds(c.process, c.tree) for c in self.components}
        machine = psutil.cpu_times()
        busy = sum(getattr(machine, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
        spent["other"] = float(busy) - sum(spent.values())
        return spent

    @staticmethod
    def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        return {name: after[name] - before[name] for name in before}


def vm_hwm_bytes(pid: int) -> int | None:
    """The kernel's peak-RSS high-water mark of a process (Linux `VmHWM`)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's RSS in the background; keeps the peak and the latest sample."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.latest = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> int:
        self.latest = self.process.memory_info().rss
        self.peak = max(self.peak, self.latest)
        return self.latest

    async def _run(self) -> None:
        while True:
            with suppress(psutil.NoSuchProcess):
                self.sample()
            await asyncio.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
