"""One settings object, read from the environment (and `.env`), cached for the process."""

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Public (it is in this file): what tokens are signed with when nothing else is configured, as
# in the tests. The API and the worker refuse to start with it outside `nurture dev`
# (nurture.boot.require_secret_key); `nurture dev` makes a random key of its own.
DEVELOPMENT_SECRET_KEY = "nurture-development-secret-change-me"
MIN_SECRET_KEY_LENGTH = 32
# Always allowed in Host: the process itself (health checks, a proxy on the same machine).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# Above the 60 s idle timeout of AWS's load balancers (and nginx's default upstream 60 s).
DEFAULT_API_KEEP_ALIVE_SECONDS = 75


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
    api_keep_alive_seconds: int = Field(
        default=DEFAULT_API_KEEP_ALIVE_SECONDS,
        ge=1,
        le=3600,
        description="the API closes a kept-alive connection idle this long; keep it above the "
        "idle timeout of a load balancer in front (AWS ALB 60 s), or the balancer may reuse a "
        "connection the API is closing and answer 502",
    )
    database_pool_size: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="Postgres connections a process keeps open (10 more are opened for bursts)",
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
    # --- Size limits (nurture.audience.limits; docs/contacts.md) -------------------------
    max_field_bytes: int = Field(
        default=64 * 1024,
        ge=256,
        le=1024 * 1024,
        description="a custom field value (or an event property) over this many bytes as JSON "
        "is refused with 413",
    )
    max_contact_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        # Half of Temporal's 2 MB payload limit: what an enrollment loads of a contact always fits.
        le=1024 * 1024,
        description="all of a contact's custom fields together, as JSON; a change that would "
        "make them larger is refused with 413",
    )
    max_event_properties_bytes: int = Field(
        default=64 * 1024,
        ge=256,
        le=1024 * 1024,
        description="all of a custom event's properties together, as JSON (413 when over)",
    )
    segment_sweep_seconds: int = Field(
        default=300,
        ge=5,
        description="how often watched segments are re-checked in full: entries that no "
        "single change announces (time passing, an edited filter) start journeys this late",
    )

    # --- Send rules: throttling (docs/send-rules.md) ----------------------------------------
    send_rate_email: float | None = Field(
        default=None,
        gt=0,
        description="at most this many emails per second over all workers (Temporal keeps "
        "the rate for the send queue); unset: no limit. Amazon SES starts at 14",
    )
    send_rate_sms: float | None = Field(
        default=None,
        gt=0,
        description="at most this many SMS per second over all workers; unset: no limit. "
        "A Twilio long code sends 1 per second",
    )
    send_rate_push: float | None = Field(
        default=None,
        gt=0,
        description="at most this many push notifications (send_push steps) per second over "
        "all workers; unset: no limit",
    )

    # --- Engagement: links in messages, tracking, unsubscribe -------------------------------
    public_base_url: str = Field(
        default="http://localhost:8000",
        description="where recipients reach the API: tracked links, open pixel, unsubscribe",
    )
    secret_key: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_SECRET_KEY),
        description="signs tracking and unsubscribe tokens (HMAC): a long random value, the "
        "same in every API and worker process; required outside `nurture dev`",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="host names the API answers to (the Host header), besides the host of "
        "public_base_url and loopback; comma-separated; `*.example.com` matches subdomains, "
        "`*` any host",
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
    uncertain_sends: Literal["unknown", "resend"] = Field(
        default="unknown",
        description="a send cut short during the provider call (worker killed, timeout after "
        "the request went out) on a channel that can neither dedupe nor be asked (SMTP, "
        "SendGrid): record it as `unknown` (never twice, maybe never) or send it again (never "
        "lost, maybe twice); see docs/operations.md",
    )

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

    # --- Outbound calls (webhook steps) and push -------------------------------------------
    outbound_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="webhook targets allowed although they are not public: IP addresses, "
        "networks (10.0.0.0/8) or host names, comma-separated; everything private, loopback, "
        "link-local or reserved is refused otherwise",
    )
    webhook_signing_secret: SecretStr | None = Field(
        default=None,
        description="HMAC-SHA256 key of the X-Nurture-Signature header of webhook steps; "
        "unset: derived from secret_key",
    )
    push_channel: Literal["outbox", "fcm"] = Field(
        default="outbox", description="who delivers push; outbox = a table, for development"
    )
    fcm_project_id: str | None = None
    fcm_service_account_file: Path | None = Field(
        default=None, description="the Firebase service account JSON key file"
    )
    fcm_base_url: str = "https://fcm.googleapis.com"
    fcm_token_url: str | None = Field(
        default=None, description="OAuth token endpoint; unset: the key file's token_uri"
    )
    score_field: str = Field(
        default="score", description="the contact field lead scoring keeps the score in"
    )

    @field_validator("outbound_allowlist", mode="before")
    @classmethod
    def _split_allowlist(cls, value: Any) -> Any:
        return cls._split_hosts(value)

    # --- Metrics and the weekly review (docs/analytics.md) ------------------------------------
    metrics_token: SecretStr | None = Field(
        default=None,
        description="a bearer token for GET /metrics; unset: only loopback clients may scrape",
    )
    worker_metrics_address: str | None = Field(
        default=None,
        description="host:port where the worker serves Temporal's SDK metrics for Prometheus",
    )
    review_recipients: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="email addresses that get the weekly review (comma-separated), besides "
        "each journey's owner",
    )
    review_schedule: str = Field(
        default="0 8 * * MON", description="cron (UTC) of the weekly review email"
    )

    @field_validator("allowed_hosts", "review_recipients", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        """`a.example.com, b.example.com` from the environment (a JSON list works too)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    def trusted_hosts(self) -> list[str]:
        """Host names the API answers to: public_base_url's, loopback, then allowed_hosts."""
        hosts: list[str] = []
        public = urlsplit(self.public_base_url).hostname
        for host in [public, *LOOPBACK_HOSTS, *self.allowed_hosts]:
            if host and host.lower() not in hosts:
                hosts.append(host.lower())
        return hosts


@lru_cache
def get_settings() -> Settings:
    return Settings()
