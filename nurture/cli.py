"""The `nurture` command.

    nurture dev [--demo]              everything on embedded defaults (see nurture.devstack)
    nurture worker                    the Temporal worker
    nurture api [--host H --port P]   the HTTP API
    nurture migrate                   upgrade the database schema
    nurture validate FILE...          check journey definition files offline
    nurture simulate FILE             run a journey for test contacts in virtual time
    nurture api-key create --name N   create an API key (the secret is shown once)
    nurture api-key list              the keys: name, prefix, created, last used, revoked
    nurture api-key revoke KEY        revoke a key (by id or prefix), at once
    nurture setup-temporal            register the search attributes on a Temporal cluster

Configuration comes from the environment (see nurture.settings.Settings); `dev` also takes
flags for what a developer changes most often.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from nurture.boot import (
    CommandError,
    configure_logging,
    exit_process,
    migrate_database,
    require_secret_key,
    resolve_database_url,
)
from nurture.settings import Settings, get_settings

logger = logging.getLogger("nurture.cli")

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
    from worker import serve_worker

    serve_worker(settings)
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from api.app import create_app
    from nurture.devstack import serve_api

    require_secret_key(settings)
    with resolve_database_url(settings) as database_url:
        asyncio.run(migrate_database(database_url))
        app = create_app(settings=settings.model_copy(update={"database_url": database_url}))
        asyncio.run(serve_api(app, args.host, args.port, settings.api_keep_alive_seconds))
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


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    """Simulate a stored journey (docs/simulation.md) against the database: nothing is sent
    or written. FILE holds the request of POST /v1/journeys/{key}/simulate and its `journey`."""
    from pydantic import ValidationError

    from api.contact_refs import find_contact_id
    from nurture.errors import NurtureError
    from nurture.simulation.prepare import simulate
    from nurture.simulation.report import as_text
    from nurture.simulation.script import SimulationRequest

    try:
        data = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CommandError(f"{args.file}: cannot read a JSON object: {err}") from err
    if not isinstance(data, dict):
        raise CommandError(f"{args.file}: a simulation is a JSON object")
    journey = args.journey or data.pop("journey", None)
    data.pop("journey", None)
    if not isinstance(journey, str):
        raise CommandError(f'{args.file}: name the journey: "journey": "<key>" or --journey')
    try:
        request = SimulationRequest.model_validate(data)
    except ValidationError as err:
        for error in err.errors(include_url=False):
            where = ".".join(str(part) for part in error["loc"])
            print(f"{args.file}: {where}: {error['msg']}", file=sys.stderr)
        return 1
    version = int(args.version) if args.version and args.version.isdigit() else args.version

    async def run(sessions: Any) -> Any:
        return await simulate(
            sessions, journey, request, find_contact_id, settings.public_base_url, version
        )

    try:
        report = _with_sessions(settings, run)
    except NurtureError as err:
        print(f"{args.file}: {err.message}", file=sys.stderr)
        for problem in err.detail if isinstance(err.detail, list) else []:
            print(f"  {problem.get('path')}: {problem.get('message')}", file=sys.stderr)
        return 1
    print(report.model_dump_json(indent=2) if args.json else as_text(report))
    return 0


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


def cmd_api_key_list(args: argparse.Namespace, settings: Settings) -> int:
    from nurture.apikeys import list_api_keys

    rows = [("ID", "NAME", "PREFIX", "CREATED", "LAST USED", "REVOKED")]
    for key in _with_sessions(settings, list_api_keys):
        rows.append(
            (
                str(key.id),
                key.name,
                key.prefix,
                _when(key.created_at),
                _when(key.last_used_at),
                _when(key.revoked_at),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def cmd_api_key_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from nurture.apikeys import KEY_CACHE_SECONDS, revoke_api_key
    from nurture.errors import NurtureError

    try:
        revoked = _with_sessions(settings, lambda sessions: revoke_api_key(sessions, args.key))
    except NurtureError as err:
        raise CommandError(err.message) from None
    key = revoked.key
    if revoked.newly:
        print(
            f"API key {key.name!r} ({key.prefix}..., id {key.id}) revoked; API processes "
            f"refuse it within {KEY_CACHE_SECONDS:g} s (how long each trusts a key it checked)."
        )
    else:
        print(
            f"API key {key.name!r} ({key.prefix}..., id {key.id}) was already revoked on "
            f"{_when(key.revoked_at)}."
        )
    return 0


def _with_sessions(settings: Settings, work: Callable[[Any], Any]) -> Any:
    """Run `work(sessions)` against the (migrated) database."""
    from nurture.db.engine import create_engine, session_factory

    async def against(database_url: str) -> Any:
        await migrate_database(database_url)
        engine = create_engine(database_url, pool_size=1)
        try:
            return await work(session_factory(engine))
        finally:
            await engine.dispose()

    with resolve_database_url(settings) as database_url:
        return asyncio.run(against(database_url))


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "-"


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

    simulate = commands.add_parser(
        "simulate",
        help="run a journey for test contacts in virtual time (nothing is sent or stored)",
    )
    simulate.add_argument("file", help='a JSON file: {"journey": KEY, "contacts": [...], ...}')
    simulate.add_argument("--journey", help="the journey's key (else the file's `journey`)")
    simulate.add_argument("--version", help='"draft" (default), "live" or a version number')
    simulate.add_argument("--json", action="store_true", help="print the whole report as JSON")
    simulate.set_defaults(handler=cmd_simulate)

    api_key = commands.add_parser("api-key", help="manage API keys")
    api_key_commands = api_key.add_subparsers(dest="api_key_command", required=True)
    create = api_key_commands.add_parser("create", help="create a key and print its secret once")
    create.add_argument("--name", required=True, help="what the key is for, e.g. 'crm-sync'")
    create.set_defaults(handler=cmd_api_key_create)
    listing = api_key_commands.add_parser(
        "list", help="list the keys: id, name, prefix, created, last used, revoked"
    )
    listing.set_defaults(handler=cmd_api_key_list)
    revoke = api_key_commands.add_parser(
        "revoke",
        help="revoke a key: refused at once here, within 10 s by running API processes",
    )
    revoke.add_argument("key", metavar="KEY", help="the key's id or its prefix (nrt_...)")
    revoke.set_defaults(handler=cmd_api_key_revoke)

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
    """Run a command. Run as the program (no `argv`: the `nurture` script, `python -m
    nurture.cli`) the process ends here through `exit_process`, never through the
    interpreter's finalization, which a Temporal client's threads can abort; given `argv`
    (tests, embedding) it returns the exit code."""
    if argv is not None:
        return run(argv)
    try:
        code = run()
    except SystemExit:
        raise  # argparse: --help or a usage error, before anything started
    except BaseException:
        traceback.print_exc()
        code = 1
    exit_process(code)


def run(argv: Sequence[str] | None = None) -> int:
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


if __name__ == "__main__":
    main()
