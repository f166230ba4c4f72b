"""`nurture dev --demo` as a developer runs it: a separate process on free ports with its own
data directory, started, used, stopped with Ctrl-C (SIGINT), then started again on the same data.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import text
from temporalio.client import Client, WorkflowExecutionStatus

from nurture.apikeys import authenticate
from nurture.boot import CommandError
from nurture.db.engine import create_engine, session_factory
from nurture.devstack import check_ports, port_in_use

START_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0
# The four seed journeys and the quickstart of the README, in key order.
SEED_JOURNEYS = [
    "benchmark-welcome",
    "dynamics-launch",
    "hubspot-nurture-goal",
    "quickstart",
    "register-coupon",
]
MARKER_WORKFLOW = "devstack-persistence-check"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env(data_dir: Path) -> dict[str, str]:
    """The caller's environment without what would point `dev` at other servers."""
    env = {
        k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("TEMPORAL_")
    }
    env["DATA_DIR"] = str(data_dir)
    return env


class DevProcess:
    """`python -m nurture.cli dev --demo`, its output collected line by line."""

    def __init__(self, data_dir: Path, cwd: Path) -> None:
        self.data_dir = data_dir
        self.api_port, self.temporal_port, self.ui_port = free_ports(3)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nurture.cli",
                "dev",
                "--demo",
                "--api-port",
                str(self.api_port),
                "--temporal-port",
                str(self.temporal_port),
                "--ui-port",
                str(self.ui_port),
            ],
            cwd=cwd,
            env=_env(data_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    def wait_for_line(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + START_TIMEOUT
        with self._changed:
            while True:
                for line in self.lines:
                    if match := re.search(pattern, line):
                        return match
                if self.process.poll() is not None:
                    pytest.fail(f"nurture dev exited ({self.process.returncode}):\n{self.output}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no line matching {pattern!r}:\n{self.output}")
                self._changed.wait(0.5)

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"nurture dev exited ({self.process.returncode}):\n{self.output}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the API was not healthy in time:\n{self.output}")

    def servers(self) -> list[psutil.Process]:
        """The Temporal dev server (a child) and the PostgreSQL postmaster (detached by pg_ctl)."""
        temporal = [
            child
            for child in psutil.Process(self.process.pid).children(recursive=True)
            if child.name() == "temporal"
        ]
        postmaster = self.data_dir / "postgres" / "postmaster.pid"
        return [*temporal, psutil.Process(int(postmaster.read_text().split()[0]))]

    def interrupt(self) -> int:
        """Ctrl-C; the exit code."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"nurture dev did not stop within {STOP_TIMEOUT}s:\n{self.output}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def servers_using(data_dir: Path) -> list[psutil.Process]:
    """Processes whose command line names the data directory: the servers `dev` started."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(data_dir) in cmdline and not is_gone(process):
            found.append(process)
    return found


def is_gone(process: psutil.Process) -> bool:
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # not ours to inspect, so not ours
        return False


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh DATA_DIR; whatever a failed test left running there is stopped afterwards."""
    path = tmp_path / "nurture-data"
    yield path
    for process in servers_using(path):
        process.terminate()
    psutil.wait_procs(servers_using(path), timeout=10)


async def stored(database_url: str, secret: str) -> dict[str, Any]:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:

            async def column(sql: str) -> list[Any]:
                return list((await conn.execute(text(sql))).scalars())

            found: dict[str, Any] = {
                "journeys": await column("SELECT key || ':' || status FROM journeys ORDER BY key"),
                "versions": await column(
                    "SELECT j.key || '@' || v.version FROM journey_versions v "
                    "JOIN journeys j ON j.id = v.journey_id ORDER BY j.key"
                ),
                "lists": await column("SELECT key FROM lists ORDER BY key"),
                "templates": await column(
                    "SELECT channel || ':' || key FROM templates ORDER BY channel, key"
                ),
                "contacts": await column("SELECT external_id FROM contacts ORDER BY external_id"),
                "api_keys": await column("SELECT name FROM api_keys"),
            }
        key = await authenticate(session_factory(engine), secret)
        found["secret_authenticates_as"] = key.name if key else None
        return found
    finally:
        await engine.dispose()


async def start_marker_workflow(address: str) -> None:
    """A workflow no worker runs: it stays open, so it must be there after a restart."""
    client = await Client.connect(address)
    await client.start_workflow(
        "PersistenceCheck", id=MARKER_WORKFLOW, task_queue="devstack-nobody-polls"
    )


async def marker_status(address: str) -> WorkflowExecutionStatus | None:
    client = await Client.connect(address)
    handle = client.get_workflow_handle(MARKER_WORKFLOW)
    status = (await handle.describe()).status
    await handle.terminate("test finished")
    return status


def test_dev_demo_runs_stops_cleanly_and_keeps_its_data(data_dir: Path, tmp_path: Path) -> None:
    first = DevProcess(data_dir, cwd=tmp_path)
    try:
        secret = first.wait_for_line(r"API key\s+(nrt_\S+)")[1]
        first.wait_healthy()
        database_url = first.wait_for_line(r"Database URL\s+(\S+)")[1]
        assert "Temporal UI    http://127.0.0.1:" in first.output

        openapi = httpx.get(f"{first.api_url}/openapi.json", timeout=10)
        assert openapi.status_code == 200
        assert "/health" in openapi.json()["paths"]

        data = asyncio.run(stored(database_url, secret))
        assert data["journeys"] == [f"{key}:active" for key in SEED_JOURNEYS]
        assert data["versions"] == [f"{key}@1" for key in SEED_JOURNEYS]
        assert data["lists"] == ["newsletter", "paid-customers"]
        assert "email:welcome" in data["templates"] and "sms:care" in data["templates"]
        assert data["contacts"] == [f"demo-{i}" for i in range(1, 6)]
        assert data["api_keys"] == ["demo"]
        assert data["secret_authenticates_as"] == "demo"
        asyncio.run(start_marker_workflow(first.temporal_address))
        servers = first.servers()
        assert len(servers) == 2, servers

        assert first.interrupt() == 0, first.output
        assert all(is_gone(p) for p in servers), servers
        assert servers_using(data_dir) == []
    finally:
        first.stop()

    second = DevProcess(data_dir, cwd=tmp_path)
    try:
        demo = second.wait_for_line(r"Demo data\s+(.*)")[1]
        assert "added 0 lists, 0 templates, 0 contacts" in demo
        assert "journeys published: none new (already published: " in demo
        assert "API key        a key named 'demo' exists" in second.output
        second.wait_healthy()

        data_again = asyncio.run(stored(database_url, secret))
        assert data_again == data
        status = asyncio.run(marker_status(second.temporal_address))
        assert status == WorkflowExecutionStatus.RUNNING

        assert second.interrupt() == 0, second.output
        assert servers_using(data_dir) == []
    finally:
        second.stop()


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        with pytest.raises(CommandError, match=f"port {port} \\(API\\) is already in use"):
            check_ports("127.0.0.1", {"API": (port, "--api-port")})

        result = subprocess.run(
            [sys.executable, "-m", "nurture.cli", "dev", "--api-port", str(port)],
            cwd=tmp_path,
            env=_env(tmp_path / "unused"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {port} (API) is already in use" in result.stderr
    assert "--api-port" in result.stderr
    assert not (tmp_path / "unused").exists(), "nothing is started when a port is taken"
