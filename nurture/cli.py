"""The `nurture` command.

    nurture worker              # run the Temporal worker (same as `python worker.py`)
    nurture migrate             # bring the database schema up to date
    nurture validate FILE...    # check journey definition files offline

Configured by the environment (see `nurture.settings.Settings`). Without DATABASE_URL, `worker`
and `migrate` use an embedded PostgreSQL under DATA_DIR/postgres.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from nurture.settings import Settings, get_settings

logger = logging.getLogger("nurture.cli")

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


@contextmanager
def resolve_database_url(settings: Settings) -> Iterator[str]:
    """The database to use: DATABASE_URL if set, else an embedded PostgreSQL under
    `data_dir/postgres`, started if needed and kept running until the block exits."""
    if settings.database_url:
        yield settings.database_url
        return
    from nurture.embedded import start_embedded_postgres

    pgdata = settings.data_dir / "postgres"
    server, url = start_embedded_postgres(pgdata)
    logger.info("using embedded PostgreSQL in %s", pgdata)
    try:
        yield url
    finally:
        server.cleanup()


def _worker(args: argparse.Namespace) -> int:
    from worker import main as worker_main

    worker_main()
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from nurture.db.migrate import upgrade

    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    with resolve_database_url(get_settings()) as database_url:
        upgrade(database_url)
    logger.info("database schema is up to date")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from nurture.journeys.validation import InvalidJourney, validate_journey

    failed = False
    for file in args.files:
        try:
            data = json.loads(Path(file).read_text(encoding="utf-8"))
        except OSError as err:
            print(f"{file}: cannot read: {err.strerror or err}")
            failed = True
            continue
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            print(f"{file}: not valid JSON: {err}")
            failed = True
            continue
        try:
            validate_journey(data)
        except InvalidJourney as err:
            for problem in err.problems:
                print(f"{file}: {problem}")  # Problem prints as "path: message"
            failed = True
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nurture", description="Marketing-automation journeys on Temporal."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run the Temporal worker")
    worker.set_defaults(handler=_worker)

    migrate = commands.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(handler=_migrate)

    validate = commands.add_parser("validate", help="check journey definition files (JSON)")
    validate.add_argument("files", nargs="+", metavar="FILE", help="journey definition file")
    validate.set_defaults(handler=_validate)

    # `nurture dev` (everything on one machine) is added here: a parser whose handler runs it.

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
