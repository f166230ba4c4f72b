"""A local, durable spool for what arrives while Postgres is away: one JSON object a line,
appended and fsynced before the request is answered, replayed once Postgres is back.

Used by the API for tracked clicks, opens and verified provider webhooks (see
`nurture.engagement_spool`): a person following a link must be redirected, and a provider
that does not retry (Twilio's status callbacks) must not lose its event, whatever the
database is doing. Each record carries its own dedupe key, so a replay that is cut short and
run again stores nothing twice.

Several API processes may share DATA_DIR: appends take an exclusive lock on the file and check
that it is still the file at the spool's path (the drainer renames it away before reading), so
no line is written to a file already read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_CURRENT = "current.jsonl"
_DRAINING = "draining-"  # + a unique suffix: files taken by a drainer, read until done


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def _current(self) -> Path:
        return self.directory / _CURRENT

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (fsync) before returning; blocking, but one short write."""
        self.directory.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        while True:
            fd = os.open(self._current, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.fstat(fd).st_ino == os.stat(self._current).st_ino
                except FileNotFoundError:
                    same = False
                if not same:  # a drainer took this file meanwhile: write to the new one
                    continue
                os.write(fd, line)
                os.fsync(fd)
                return
            finally:
                os.close(fd)  # also releases the lock

    def pending(self) -> bool:
        return self.directory.is_dir() and any(
            path.name == _CURRENT or path.name.startswith(_DRAINING)
            for path in self.directory.iterdir()
        )

    async def drain(self, handle: Callable[[dict[str, Any]], Awaitable[None]]) -> int:
        """Hand every spooled record to `handle`, oldest file first; how many were handled.

        A file is deleted once all its records are handled. If `handle` raises (Postgres is
        still away), the file stays for the next round, which starts again at its first line:
        `handle` must be idempotent (each record carries its dedupe key)."""
        if not self.directory.is_dir():
            return 0
        # Take the current file; appends go to a new one from now on.
        with contextlib.suppress(FileNotFoundError):
            os.replace(self._current, self.directory / f"{_DRAINING}{uuid.uuid4().hex}.jsonl")
        handled = 0
        taken = sorted(
            (p for p in self.directory.iterdir() if p.name.startswith(_DRAINING)),
            key=lambda p: p.stat().st_mtime,
        )
        for path in taken:
            fd = os.open(path, os.O_RDONLY)
            try:
                # An append that opened the file before the rename finishes before we read.
                fcntl.flock(fd, fcntl.LOCK_EX)
                lines = path.read_bytes().splitlines()
            finally:
                os.close(fd)
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:  # a torn last line (the machine crashed mid-append)
                    logger.warning("skipping an unreadable spool line in %s", path)
                    continue
                await handle(record)
                handled += 1
            path.unlink()
        return handled
