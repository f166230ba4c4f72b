"""The `nurture` command.

    nurture dev [--demo]              everything on embedded defaults (see nurture.devstack)
    nurture worker                    the Temporal worker
    nurture api [--host H --port P]   the HTTP API
    nurture migrate                   upgrade the database schema
    nurture validate FILE...          check journey definition files offline
    nurture api-key create --name N   create an API key (the secret is shown once)
    nurture setup-temporal            register the search attributes on a Temporal cluster

Configuration comes from the environment (see nurture.settings.Settings); `dev` also takes
flags for what a developer changes most often.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nurture.settings import Settings, get_settings

logger = logging.getLogger("nurture.cli")

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


# --- commands --------------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from nurture.devstack import DevOptions, run_dev

    options = DevOptions(
        api_port=args.api_port,
        temporal_port=args.temporal_port,
        ui_port=args.ui_port,
        database_url=args.database_url,
        temporal_address=args.temporal_address,
        demo=args.demo,
    )
    return run_dev(settings, options)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker import run_worker

    with resolve_database_url(settings) as database_url:
        asyncio.run(migrate_database(database_url))
        run_until_signalled(lambda: run_worker(settings, database_url))
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from api.app import create_app
    from nurture.devstack import serve_api

    with resolve_database_url(settings) as database_url:
        asyncio.run(migrate_database(database_url))
        app = create_app(settings=settings.model_copy(update={"database_url": database_url}))
        asyncio.run(serve_api(app, args.host, args.port))
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    with resolve_database_url(settings) as database_url:
        asyncio.run(migrate_database(database_url))
    print("database schema is up to date")
    return 0


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    from nurture.journeys.validation import InvalidJourney, validate_journey

    failed = False
    for path in _journey_files(args.files):
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            print(f"{path}: cannot read: {err.strerror or err}")
            failed = True
            continue
        except ValueError as err:
            print(f"{path}: not valid JSON: {err}")
            failed = True
            continue
        if not isinstance(data, dict):
            print(f"{path}: a journey definition is a JSON object")
            failed = True
            continue
        try:
            validate_journey(data)
        except InvalidJourney as err:
            failed = True
            for problem in err.problems:
                print(f"{path}: {problem}")
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


def _journey_files(arguments: Sequence[str]) -> Iterator[Path]:
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            yield from sorted(path.glob("*.json"))
        else:
            yield path


def cmd_api_key_create(args: argparse.Namespace, settings: Settings) -> int:
    from nurture.apikeys import create_api_key
    from nurture.db.engine import create_engine, session_factory

    async def create(database_url: str) -> str:
        await migrate_database(database_url)
        engine = create_engine(database_url, pool_size=1)
        try:
            new = await create_api_key(session_factory(engine), args.name)
        finally:
            await engine.dispose()
        return new.secret

    with resolve_database_url(settings) as database_url:
        secret = asyncio.run(create(database_url))
    # The secret alone on stdout, so `KEY=$(nurture api-key create --name ci)` works.
    print(
        f"API key {args.name!r} created. Copy it now: it is not stored, only its digest is,",
        file=sys.stderr,
    )
    print("so it cannot be shown again. Send it as 'Authorization: Bearer <key>'.", file=sys.stderr)
    print(secret)
    return 0


def cmd_setup_temporal(args: argparse.Namespace, settings: Settings) -> int:
    from nurture.devstack import prepare_temporal

    async def prepare() -> list[str]:
        _client, added = await prepare_temporal(settings, wait_seconds=args.wait)
        return added

    added = asyncio.run(prepare())
    where = f"{settings.temporal_address}, namespace {settings.temporal_namespace}"
    if added:
        print(f"registered search attributes on {where}: {', '.join(added)}")
    else:
        print(f"search attributes already registered on {where}")
    return 0


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


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nurture",
        description="Marketing-automation journeys on Temporal. Configured by the environment "
        "(DATABASE_URL, TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE, "
        "TEMPORAL_UI_URL, DATA_DIR) or a .env file.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev",
        help="run everything locally: PostgreSQL, Temporal dev server and UI, worker, API",
        description="Start an embedded PostgreSQL (data in DATA_DIR, default ./.nurture) unless "
        "a database URL is given, the Temporal dev server with its Web UI unless a Temporal "
        "address is given, then the worker and the API together. Ctrl-C stops it all; data "
        "is kept for the next start.",
    )
    dev.add_argument("--api-port", type=int, default=8000, help="default 8000")
    dev.add_argument("--temporal-port", type=int, default=7233, help="default 7233")
    dev.add_argument("--ui-port", type=int, default=8233, help="Temporal Web UI, default 8233")
    dev.add_argument(
        "--database-url", help="use this PostgreSQL instead of the embedded one (DATABASE_URL)"
    )
    dev.add_argument(
        "--temporal-address",
        help="use this Temporal server instead of starting one (TEMPORAL_ADDRESS)",
    )
    dev.add_argument(
        "--demo",
        action="store_true",
        help="add demo data: lists, templates, the four seed journeys published, contacts, "
        "an API key (only what is missing)",
    )
    dev.set_defaults(handler=cmd_dev)

    worker = commands.add_parser("worker", help="run the Temporal worker")
    worker.set_defaults(handler=cmd_worker)

    api = commands.add_parser("api", help="run the HTTP API (uvicorn)")
    api.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    api.add_argument("--port", type=int, default=8000, help="default 8000")
    api.set_defaults(handler=cmd_api)

    migrate = commands.add_parser("migrate", help="upgrade the database schema to the latest")
    migrate.set_defaults(handler=cmd_migrate)

    validate = commands.add_parser("validate", help="check journey definition files (JSON) offline")
    validate.add_argument(
        "files", nargs="+", metavar="FILE", help="journey JSON files, or folders of them"
    )
    validate.set_defaults(handler=cmd_validate)

    api_key = commands.add_parser("api-key", help="manage API keys")
    api_key_commands = api_key.add_subparsers(dest="api_key_command", required=True)
    create = api_key_commands.add_parser("create", help="create a key and print its secret once")
    create.add_argument("--name", required=True, help="what the key is for, e.g. 'crm-sync'")
    create.set_defaults(handler=cmd_api_key_create)

    setup = commands.add_parser(
        "setup-temporal",
        help="register Nurture's search attributes on the Temporal namespace",
    )
    setup.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="keep retrying this long while Temporal or its namespace is not up (default 60)",
    )
    setup.set_defaults(handler=cmd_setup_temporal)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        code = handler(args, get_settings())
    except CommandError as err:
        print(f"nurture {args.command}: {err}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    return code


class CommandError(Exception):
    """A failure the user can act on: printed without a traceback."""


if __name__ == "__main__":
    raise SystemExit(main())
