"""Starting a Nurture process: the database it uses (embedded or DATABASE_URL), migrating it,
running until a signal, logging, and the error a command reports to the user.

Below the `nurture` command, `nurture dev`, the demo data and `worker.py`, which all need these,
so none of them imports another to get them.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NoReturn

from nurture.settings import DEVELOPMENT_SECRET_KEY, MIN_SECRET_KEY_LENGTH, Settings

logger = logging.getLogger("nurture.cli")


class CommandError(Exception):
    """A failure the user can act on: printed without a traceback."""


MAKE_A_SECRET_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def require_secret_key(settings: Settings) -> None:
    """Refuse to run the API or the worker with a secret key anyone could know: it signs the
    tracked links (a redirect to anywhere), the open pixel and unsubscribe links. `nurture dev`
    does not call this: it makes a random key of its own (nurture.devstack)."""
    secret = settings.secret_key.get_secret_value().strip()
    if secret == DEVELOPMENT_SECRET_KEY:
        problem = "SECRET_KEY is not set (the public development value is in use)"
    elif len(secret) < MIN_SECRET_KEY_LENGTH:
        problem = f"SECRET_KEY is too short ({len(secret)} characters)"
    else:
        return
    raise CommandError(
        f"{problem}: it signs tracked links, the open pixel and unsubscribe links, so anyone "
        "who knows it can forge them. Set SECRET_KEY to a random value of at least "
        f"{MIN_SECRET_KEY_LENGTH} characters, the same for every API and worker process, e.g. "
        f"the output of: {MAKE_A_SECRET_KEY}"
    )


# Any constant works, as long as every process that migrates uses the same one.
_MIGRATION_LOCK = 7_238_804_912


@contextmanager
def resolve_database_url(settings: Settings) -> Iterator[str]:
    """The database to use: DATABASE_URL if set, else an embedded PostgreSQL kept under
    `data_dir/postgres`, started here and stopped when the block ends."""
    if settings.database_url:
        yield settings.database_url
        return
    from nurture.embedded import start_embedded_postgres

    pgdata = embedded_pgdata(settings)
    _forget_dead_handles(pgdata)
    server, url = start_embedded_postgres(pgdata)
    try:
        yield url
    finally:
        server.cleanup()


def embedded_pgdata(settings: Settings) -> Path:
    return (settings.data_dir / "postgres").resolve()


def _forget_dead_handles(pgdata: Path) -> None:
    """embedded-postgres stops the server when the last process using it lets go, counting
    processes in a file; one that was killed stays counted and the server would never stop.
    Drop the processes that no longer exist."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _process_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def migrate_database(database_url: str) -> None:
    """Upgrade to the latest schema. Idempotent, and safe when several processes start at once
    (worker and API replicas): they take turns under a Postgres advisory lock."""
    from sqlalchemy import pool, text
    from sqlalchemy.ext.asyncio import create_async_engine

    from nurture.db.migrate import upgrade_async

    engine = create_async_engine(database_url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
            try:
                await upgrade_async(database_url)
            finally:
                await conn.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK}
                )
    finally:
        await engine.dispose()


def run_until_signalled(main: Callable[[], Awaitable[None]]) -> None:
    """Run `main` in a new event loop; SIGINT or SIGTERM cancel it (which the worker and the
    server turn into a clean shutdown) instead of killing the process mid-way."""

    async def runner() -> None:
        task = asyncio.ensure_future(main())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            logger.info("stopped")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(runner())


def exit_process(code: int) -> NoReturn:
    """End the process with `code` without the interpreter's finalization.

    The Temporal client runs on Rust threads (Tokio) that call into Python to complete each
    call's future on the event loop. The thread that completed the last call may still be on
    its way out of Python when the main thread returns; if the interpreter is finalizing by
    then, that thread aborts the process ("Fatal Python error: PyGILState_Release", SIGABRT,
    sometimes SIGSEGV): about 1 exit in 20 of `nurture setup-temporal`, after its work was done.
    Those threads cannot be joined, so a process that may have used Temporal ends here instead:
    what exit handlers do (logging, embedded PostgreSQL) is done first, the output flushed,
    then `os._exit` ends it without finalizing."""
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with suppress(OSError, ValueError):  # closed, or a pipe nobody reads
                stream.flush()
        os._exit(code)


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not verbose:
        # embedded-postgres logs every command it runs with its whole output at INFO.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # platformdirs warns that XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
    warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
