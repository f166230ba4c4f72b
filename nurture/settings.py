"""One settings object, read from the environment (and `.env`), cached for the process."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
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
    segment_sweep_seconds: int = Field(
        default=300,
        ge=5,
        description="how often watched segments are re-checked in full: entries that no "
        "single change announces (time passing, an edited filter) start journeys this late",
    )

    # --- Engagement: links in messages, tracking, unsubscribe -------------------------------
    public_base_url: str = Field(
        default="http://localhost:8000",
        description="where recipients reach the API: tracked links, open pixel, unsubscribe",
    )
    secret_key: SecretStr = Field(
        default=SecretStr("nurture-development-secret-change-me"),
        description="signs tracking and unsubscribe tokens (HMAC); set a long random value",
    )
    track_opens: bool = True
    track_clicks: bool = True

    # --- Channels -------------------------------------------------------------------------
    email_channel: Literal["outbox", "smtp", "sendgrid", "postmark", "mailgun"] = Field(
        default="outbox", description="who delivers email; outbox = a table, for development"
    )
    sms_channel: Literal["outbox", "twilio"] = "outbox"
    email_from: str = Field(default="Nurture <nurture@localhost>", description="From: of emails")
    email_reply_to: str | None = None
    provider_timeout_seconds: float = Field(default=20, gt=0)

    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"

    sendgrid_api_key: SecretStr | None = None
    sendgrid_base_url: str = "https://api.sendgrid.com"
    # The "verification key" of SendGrid's signed event webhook (base64 DER or PEM, ECDSA P-256).
    sendgrid_webhook_public_key: str | None = None

    postmark_server_token: SecretStr | None = None
    postmark_base_url: str = "https://api.postmarkapp.com"
    postmark_message_stream: str = "outbound"
    # Postmark webhooks carry HTTP basic auth credentials that we choose when setting them up.
    postmark_webhook_username: str | None = None
    postmark_webhook_password: SecretStr | None = None

    mailgun_api_key: SecretStr | None = None
    mailgun_domain: str | None = None
    mailgun_base_url: str = "https://api.mailgun.net"
    mailgun_webhook_signing_key: SecretStr | None = None

    # Amazon SES notifications arrive through SNS; their signing certificates are fetched from
    # these hosts only (and cached).
    sns_certificate_hosts: list[str] = Field(
        default_factory=lambda: ["sns.*.amazonaws.com", "sns.*.amazonaws.com.cn"]
    )
    sns_topic_arns: list[str] = Field(
        default_factory=list, description="accept SNS messages from these topics only (if set)"
    )

    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from_number: str | None = None
    twilio_messaging_service_sid: str | None = None
    twilio_base_url: str = "https://api.twilio.com"


@lru_cache
def get_settings() -> Settings:
    return Settings()
