"""Alembic, driven from code so `nurture migrate`, the worker and the tests share one path."""

import asyncio

from alembic import command
from alembic.config import Config


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "nurture:migrations")
    # Alembic's config is ConfigParser-based: a literal % must be doubled.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """Run migrations from async code (env.py starts its own event loop, so use a thread)."""
    await asyncio.to_thread(upgrade, database_url, revision)
