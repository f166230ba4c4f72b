"""One settings object, read from the environment (and `.env`), cached for the process."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="postgresql+asyncpg://... ; unset: an embedded PostgreSQL under data_dir",
    )
    temporal_address: str = Field(default="localhost:7233", description="host:port of Temporal")
    temporal_namespace: str = "default"
    temporal_task_queue: str = "nurture"
    temporal_ui_url: str = Field(
        default="http://localhost:8233", description="base URL of the Temporal Web UI, for links"
    )
    data_dir: Path = Field(default=Path(".nurture"), description="embedded services keep data here")
    max_body_bytes: int = Field(
        default=1_000_000, ge=1024, description="larger request bodies are refused with 413"
    )
    worker_max_cached_workflows: int = Field(
        default=500,
        ge=0,
        description="enrollments a worker keeps in memory; others are replayed when they wake",
    )
    max_steps_per_run: int = Field(
        default=500,
        ge=1,
        description="an enrollment continues as new after this many steps, bounding its history",
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
