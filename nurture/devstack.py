"""`nurture dev`: the whole product on one machine from what pip installed.

One process owns everything and stops everything: an embedded PostgreSQL (unless a database
URL is given), the Temporal dev server with its Web UI as a child process (unless a Temporal
address is given), the worker and the API in one event loop. Data lives in DATA_DIR (default
./.nurture): PostgreSQL in `postgres/`, Temporal in `temporal.db` (SQLite in WAL mode), so a
second start carries on where the first stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import SecretStr
from sqlalchemy.engine import make_url
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from nurture.binaries import find_binary
from nurture.boot import CommandError, embedded_pgdata, migrate_database, resolve_database_url
from nurture.settings import DEFAULT_API_KEEP_ALIVE_SECONDS, MIN_SECRET_KEY_LENGTH, Settings
from nurture.temporal import connect
from nurture.tracing import dev_server_flags, ensure_search_attributes

logger = logging.getLogger("nurture.dev")

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT = 10.0  # seconds the Temporal dev server gets to stop before it is killed


@dataclass(frozen=True)
class DevOptions:
    api_port: int = 8000
    temporal_port: int = 7233
    ui_port: int = 8233
    database_url: str | None = None
    temporal_address: str | None = None
    demo: bool = False


# --- ports -----------------------------------------------------------------------------------


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on host:port. SO_REUSEADDR, as the servers themselves use it,
    so a port left in TIME_WAIT by the previous run does not count as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(host: str, ports: dict[str, tuple[int, str]]) -> None:
    """`ports` maps what uses a port to (port, flag that changes it); fail naming the taken."""
    taken = [
        f"port {port} ({what}) is already in use on {host}: stop what uses it, or pass {flag}"
        for what, (port, flag) in ports.items()
        if port_in_use(host, port)
    ]
    if taken:
        raise CommandError("\n".join(taken))


# --- the secret key --------------------------------------------------------------------------


def development_secret_key(data_dir: Path) -> str:
    """The key `nurture dev` signs links with when SECRET_KEY is not set: random, made on the
    first start and kept in DATA_DIR/secret_key (readable by its owner only), so links in
    messages sent before a restart still work after it."""
    path = data_dir / "secret_key"
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if len(existing) >= MIN_SECRET_KEY_LENGTH:
        return existing
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


# --- Temporal --------------------------------------------------------------------------------


def temporal_dev_command(
    binary: str, data_dir: Path, host: str, port: int, ui_port: int, namespace: str
) -> list[str]:
    return [
        binary,
        "server",
        "start-dev",
        "--db-filename",
        str(data_dir / "temporal.db"),
        # WAL: 2.5-3.5x the starts and signals per second of SQLite's defaults, measured here.
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=normal",
        "--ip",
        host,
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--namespace",
        namespace,
        *dev_server_flags(),
        "--log-level",
        "warn",
    ]


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, have the kernel stop the child if this process dies without cleaning up
    (kill -9), so no orphaned server keeps the ports and the database file."""
    if sys.platform != "linux":
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    pr_set_pdeathsig = 1

    def set_parent_death_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return set_parent_death_signal


class TemporalDevServer:
    """The pip-installed `temporal server start-dev`, as a child process logging to a file."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @classmethod
    async def start(
        cls, data_dir: Path, host: str, port: int, ui_port: int, namespace: str
    ) -> TemporalDevServer:
        command = temporal_dev_command(
            find_binary("temporal"), data_dir, host, port, ui_port, namespace
        )
        log_path = data_dir / "temporal.log"
        # The CLI reads TEMPORAL_* variables as client options; ours mean something else.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                # Its own session: Ctrl-C in the terminal reaches only us, and we stop it
                # after the worker has shut down rather than under its feet.
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        logger.debug("started %s (pid %s)", " ".join(command), process.pid)
        return cls(process, log_path)

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> CommandError:
        return CommandError(f"{what}; the end of {self.log_path}:\n{self.tail()}")

    async def stop(self) -> None:
        if self.exited:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            logger.warning("the Temporal dev server did not stop in %ss; killing it", STOP_TIMEOUT)
            self.process.kill()
            await self.process.wait()


_NOT_READY = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.NOT_FOUND, RPCStatusCode.DEADLINE_EXCEEDED)


async def prepare_temporal(
    settings: Settings, wait_seconds: float = 60.0, server: TemporalDevServer | None = None
) -> tuple[Client, list[str]]:
    """Connect to Temporal and register our search attributes on the namespace, retrying while
    the server (or its namespace) is still coming up; return the client and what was added."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    client: Client | None = None
    problem = ""
    while True:
        if server is not None and server.exited:
            raise server.failure(
                f"the Temporal dev server exited with code {server.process.returncode}"
            )
        try:
            if client is None:
                client = await asyncio.wait_for(connect(settings), timeout=5)
            added = await ensure_search_attributes(client, settings.temporal_namespace)
            return client, added
        except RPCError as err:
            if err.status not in _NOT_READY:
                raise
            problem = err.message
        except (RuntimeError, OSError, TimeoutError) as err:  # a failed connect
            problem = str(err) or type(err).__name__
        if loop.time() >= deadline:
            what = (
                f"Temporal at {settings.temporal_address} (namespace "
                f"{settings.temporal_namespace}) was not ready within {wait_seconds:g}s: {problem}"
            )
            raise server.failure(what) if server else CommandError(what)
        await asyncio.sleep(0.25)


# --- the API ---------------------------------------------------------------------------------


class EmbeddedServer(uvicorn.Server):
    """uvicorn's server without its own signal handling: whoever runs it decides when to stop
    (uvicorn would also re-raise the signal after a graceful exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ServerFailed(Exception):
    pass


async def serve(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as exit_:  # uvicorn exits when it cannot bind or the lifespan fails
        raise ServerFailed(
            f"the API server stopped during start-up (exit code {exit_.code})"
        ) from None


def api_server(
    app: Any, host: str, port: int, keep_alive_seconds: int = DEFAULT_API_KEEP_ALIVE_SECONDS
) -> EmbeddedServer:
    """uvicorn for the API; `keep_alive_seconds` replaces uvicorn's 5 s, shorter than the idle
    timeout of the load balancers in front of an API."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level="info",
        timeout_keep_alive=keep_alive_seconds,
    )
    return EmbeddedServer(config)


async def serve_api(app: Any, host: str, port: int, keep_alive_seconds: int) -> None:
    """`nurture api`: serve until SIGINT or SIGTERM, then finish requests in flight."""
    server = api_server(app, host, port, keep_alive_seconds)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _request_exit, server)
    try:
        await serve(server)
    except ServerFailed as err:
        raise CommandError(str(err)) from None


def _request_exit(server: uvicorn.Server) -> None:
    if server.should_exit:
        server.force_exit = True  # a second Ctrl-C: stop waiting for open connections
    server.should_exit = True


# --- nurture dev -----------------------------------------------------------------------------


def run_dev(settings: Settings, options: DevOptions) -> int:
    host = LOOPBACK
    overrides: dict[str, Any] = {"data_dir": settings.data_dir.resolve()}
    if options.database_url:
        overrides["database_url"] = options.database_url
    external_temporal = bool(options.temporal_address) or (
        "temporal_address" in settings.model_fields_set
    )
    if options.temporal_address:
        overrides["temporal_address"] = options.temporal_address
    if not external_temporal:
        overrides["temporal_address"] = f"{host}:{options.temporal_port}"
        overrides["temporal_ui_url"] = f"http://{host}:{options.ui_port}"
    settings = settings.model_copy(update=overrides)

    examples = None
    if options.demo:
        from nurture.demo import examples_dir

        examples = examples_dir()  # fail before starting anything
    ports = {"API": (options.api_port, "--api-port")}
    if not external_temporal:
        ports["Temporal"] = (options.temporal_port, "--temporal-port")
        ports["Temporal Web UI"] = (options.ui_port, "--ui-port")
    check_ports(host, ports)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if "secret_key" not in settings.model_fields_set:
        secret = development_secret_key(settings.data_dir)
        settings = settings.model_copy(update={"secret_key": SecretStr(secret)})
    if not settings.database_url:
        print(f"Starting PostgreSQL (data in {embedded_pgdata(settings)})...", flush=True)
    with resolve_database_url(settings) as database_url:
        stack = DevStack(settings, options, host, database_url, external_temporal, examples)
        code = asyncio.run(stack.run())
    if stack.running:
        print("Nurture stopped.", flush=True)
    return code


class DevStack:
    def __init__(
        self,
        settings: Settings,
        options: DevOptions,
        host: str,
        database_url: str,
        external_temporal: bool,
        examples: Path | None,
    ) -> None:
        self.options = options
        self.host = host
        if "public_base_url" not in settings.model_fields_set:
            # Tracked links and unsubscribe links in development point at this API.
            settings = settings.model_copy(update={"public_base_url": self.api_url})
        self.settings = settings
        self.database_url = database_url
        self.external_temporal = external_temporal
        self.examples = examples
        self.stop_requested = asyncio.Event()
        self.running = False

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.options.api_port}"

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None

        def on_signal(sig: signal.Signals) -> None:
            # A second Ctrl-C gets Python's default (KeyboardInterrupt): a way out of a stuck stop.
            loop.remove_signal_handler(signal.SIGINT)
            print(f"\n{sig.name}: stopping Nurture...", flush=True)
            if self.running:
                self.stop_requested.set()
            else:
                main.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await self._run()
        except asyncio.CancelledError:
            return 0  # stopped during start-up; everything started so far is stopped
        except CommandError as err:
            print(f"nurture dev: {err}", file=sys.stderr, flush=True)
            return 1
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _run(self) -> int:
        from api.app import create_app
        from api.resources import Resources
        from nurture.analytics.schedule import ensure_review_schedule
        from nurture.audience.segments.sweeps import start_segment_watch
        from nurture.channels.registry import channels_from_settings, close_channels
        from nurture.db.engine import create_engine, session_factory
        from nurture.journeys.enrollments import EnrollmentOptions
        from worker import build_worker, start_loops

        settings = self.settings
        async with AsyncExitStack() as stack:
            temporal: TemporalDevServer | None = None
            if not self.external_temporal:
                print("Starting the Temporal dev server...", flush=True)
                temporal = await TemporalDevServer.start(
                    settings.data_dir,
                    self.host,
                    self.options.temporal_port,
                    self.options.ui_port,
                    settings.temporal_namespace,
                )
                stack.push_async_callback(temporal.stop)

            # The schema and the demo data while Temporal boots.
            await migrate_database(self.database_url)
            engine = create_engine(self.database_url, pool_size=settings.database_pool_size)
            stack.push_async_callback(engine.dispose)
            sessions = session_factory(engine)
            demo_report: list[str] = []
            if self.examples is not None:
                from nurture.demo import seed_demo

                seeded = await seed_demo(sessions, self.examples)
                demo_report = seeded.lines(self.api_url)

            client, added = await prepare_temporal(settings, wait_seconds=60, server=temporal)
            if added:
                logger.info("registered search attributes %s", ", ".join(added))

            channels = channels_from_settings(settings, sessions)
            stack.push_async_callback(close_channels, channels)
            worker = build_worker(
                client,
                sessions,
                settings.temporal_task_queue,
                channels=channels,
                max_steps_per_run=settings.max_steps_per_run,
                max_cached_workflows=settings.worker_max_cached_workflows,
                settings=settings,
                graceful_shutdown_timeout=timedelta(seconds=5),
            )
            worker_task = asyncio.create_task(worker.run(), name="worker")
            stack.push_async_callback(_stop_worker, worker, worker_task)
            await start_segment_watch(client, settings.temporal_task_queue)
            await ensure_review_schedule(
                client, settings.temporal_task_queue, settings.review_schedule
            )
            options = EnrollmentOptions(settings.temporal_task_queue, settings.max_steps_per_run)
            for loop in start_loops(sessions, client, options):
                stack.callback(loop.cancel)

            resources = Resources(
                settings=settings, sessions=sessions, temporal=client, channels=channels
            )
            api = api_server(
                create_app(resources),
                self.host,
                self.options.api_port,
                settings.api_keep_alive_seconds,
            )
            api_task = asyncio.create_task(serve(api), name="api")
            stack.push_async_callback(_stop_api, api, api_task)
            while not api.started:
                if api_task.done():
                    failure = None if api_task.cancelled() else api_task.exception()
                    raise CommandError(str(failure or "the API server stopped during start-up"))
                await asyncio.sleep(0.05)

            self.running = True
            self._print_banner(demo_report)
            return await self._wait(worker_task, api_task, temporal)

    async def _wait(
        self,
        worker_task: asyncio.Task[None],
        api_task: asyncio.Task[None],
        temporal: TemporalDevServer | None,
    ) -> int:
        watched: dict[asyncio.Future[Any], str] = {
            asyncio.ensure_future(self.stop_requested.wait()): "stop",
            worker_task: "the worker",
            api_task: "the API server",
        }
        if temporal is not None:
            watched[asyncio.ensure_future(temporal.process.wait())] = "temporal"
        try:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future, name in watched.items():
                if name in ("stop", "temporal"):
                    future.cancel()
        ended = watched[next(iter(done))]
        if ended == "stop":
            return 0
        if ended == "temporal" and temporal is not None:
            raise temporal.failure(
                f"the Temporal dev server exited unexpectedly (code {temporal.process.returncode})"
            )
        task = next(iter(done))
        error = task.exception() if not task.cancelled() else None
        raise CommandError(f"{ended} stopped unexpectedly: {error!r}")

    def _print_banner(self, demo_report: list[str]) -> None:
        settings = self.settings
        api_url = self.api_url
        lines = [
            "",
            "Nurture is running. Ctrl-C stops it all; data is kept for the next start.",
            f"  API            {api_url}",
            f"  API docs       {api_url}/docs",
            f"  Temporal UI    {settings.temporal_ui_url}",
            f"  Temporal       {settings.temporal_address} (namespace "
            f"{settings.temporal_namespace}, task queue {settings.temporal_task_queue})",
        ]
        if not self.external_temporal:
            lines.append(f"  Temporal data  {settings.data_dir / 'temporal.db'}")
        if settings.database_url:
            url = make_url(self.database_url)
            shown = url.render_as_string(hide_password=True) if url.password else self.database_url
            lines.append(f"  Database URL   {shown}")
        else:
            lines.append(f"  Database       embedded PostgreSQL in {embedded_pgdata(settings)}")
            lines.append(f"  Database URL   {self.database_url}")
        lines += demo_report
        if not demo_report:
            lines.append("  Create an API key with: nurture api-key create --name NAME")
        print("\n".join(lines) + "\n", flush=True)


async def _stop_api(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=10)
    except TimeoutError:
        server.force_exit = True
        await asyncio.wait({task}, timeout=5)
    except ServerFailed:
        pass


async def _stop_worker(worker: Any, task: asyncio.Task[None]) -> None:
    try:
        await asyncio.wait_for(worker.shutdown(), timeout=15)
    except TimeoutError:
        logger.warning("the worker did not shut down in 15s; cancelling it")
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        logger.exception("the worker failed")
