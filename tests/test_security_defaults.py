"""Secure by default: no API or worker on a secret key anyone knows, and no response built
from a forged Host header."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from temporalio.client import Client

from api.app import create_app
from api.hosts import host_allowed, host_name
from api.resources import Resources
from nurture.boot import CommandError, require_secret_key
from nurture.cli import cmd_api
from nurture.db.engine import SessionFactory
from nurture.devstack import development_secret_key
from nurture.settings import DEVELOPMENT_SECRET_KEY, Settings
from worker import serve_worker

ROOT = Path(__file__).resolve().parent.parent
GOOD_SECRET = "k" * 43
HOW_TO_MAKE_ONE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


# --- SECRET_KEY ------------------------------------------------------------------------------


def _unconfigured(**values: Any) -> Settings:
    # Nothing about the database is reached: the refusal comes first.
    return Settings(_env_file=None, database_url="postgresql+asyncpg://nobody@nowhere/x", **values)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        (None, "SECRET_KEY is not set"),
        (DEVELOPMENT_SECRET_KEY, "SECRET_KEY is not set"),
        ("", "SECRET_KEY is too short (0 characters)"),
        ("short-secret", "SECRET_KEY is too short (12 characters)"),
    ],
)
def test_api_and_worker_refuse_a_secret_key_anyone_could_know(
    secret: str | None, problem: str
) -> None:
    settings = _unconfigured(**({} if secret is None else {"secret_key": SecretStr(secret)}))
    args = argparse.Namespace(host="127.0.0.1", port=0)

    for start in (
        lambda: require_secret_key(settings),
        lambda: serve_worker(settings),  # `nurture worker` and `python worker.py`
        lambda: cmd_api(args, settings),  # `nurture api`
        lambda: create_app(settings=settings),  # `uvicorn api.app:create_app --factory`
    ):
        with pytest.raises(CommandError) as refused:
            start()
        assert str(refused.value).startswith(problem)
        assert HOW_TO_MAKE_ONE in str(refused.value)


def test_a_long_random_secret_key_is_accepted() -> None:
    settings = _unconfigured(secret_key=SecretStr(GOOD_SECRET))
    require_secret_key(settings)
    create_app(settings=settings)  # built; its lifespan (not run here) connects


def _run(*command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DATA_DIR")}
    env["DATABASE_URL"] = "postgresql+asyncpg://nobody@127.0.0.1:9/never-reached"
    return subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


@pytest.mark.parametrize(
    "command",
    [("-m", "nurture.cli", "worker"), ("-m", "nurture.cli", "api"), (str(ROOT / "worker.py"),)],
)
def test_processes_started_without_a_secret_key_exit_saying_how_to_make_one(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    result = _run(*command, cwd=tmp_path)  # tmp_path: no .env file

    assert result.returncode == 1, result.stderr
    assert "SECRET_KEY is not set" in result.stderr
    assert HOW_TO_MAKE_ONE in result.stderr
    assert "Traceback" not in result.stderr


def test_nurture_dev_makes_its_own_secret_key_and_keeps_it(tmp_path: Path) -> None:
    first = development_secret_key(tmp_path / "data")
    again = development_secret_key(tmp_path / "data")
    elsewhere = development_secret_key(tmp_path / "other")

    assert first == again != elsewhere
    assert len(first) >= 32 and first != DEVELOPMENT_SECRET_KEY
    require_secret_key(_unconfigured(secret_key=SecretStr(first)))
    mode = stat.S_IMODE((tmp_path / "data" / "secret_key").stat().st_mode)
    assert mode == 0o600


# --- trusted hosts ---------------------------------------------------------------------------

PUBLIC = "https://links.example.com"
MakeClient = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def app_for(
    sessions: SessionFactory, client: Client, settings: Settings
) -> AsyncIterator[MakeClient]:
    """An HTTP client for the app with these settings (public URL: PUBLIC); no API key."""
    clients: list[httpx.AsyncClient] = []

    def make(**values: Any) -> httpx.AsyncClient:
        configured = settings.model_copy(update={"public_base_url": PUBLIC, **values})
        app = create_app(Resources(configured, sessions, client))
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC)
        clients.append(http)
        return http

    yield make
    for http in clients:
        await http.aclose()


async def test_a_forged_host_is_refused_and_never_redirected_to(app_for: MakeClient) -> None:
    http = app_for(allowed_hosts=[])
    forged = {"Host": "evil.example"}

    slash = await http.get("/v1/contacts/", headers=forged)
    plain = await http.get("/v1/journeys", headers=forged)

    assert slash.status_code == plain.status_code == 400
    assert "location" not in slash.headers
    assert slash.json()["error"] == "bad_request"
    assert "unknown host 'evil.example'" in slash.json()["detail"]


async def test_trailing_slash_is_not_redirected_even_when_any_host_is_allowed(
    app_for: MakeClient,
) -> None:
    http = app_for(allowed_hosts=["*"])

    response = await http.get("/v1/contacts/", headers={"Host": "evil.example"})

    assert response.status_code == 404
    assert "location" not in response.headers


async def test_our_hosts_are_served(app_for: MakeClient) -> None:
    http = app_for(allowed_hosts=["api.internal", "*.nurture.example"])

    for host in (
        "links.example.com",  # PUBLIC_BASE_URL's
        "LINKS.example.com:443",
        "localhost:8000",
        "127.0.0.1",
        "[::1]:8000",
        "api.internal:8000",
        "eu.nurture.example",
    ):
        response = await http.get("/v1/journeys", headers={"Host": host})
        assert response.status_code == 401, (host, response.text)  # past the host check

    for host in ("nurture.example", "evil.example", "links.example.com.evil.example"):
        response = await http.get("/v1/journeys", headers={"Host": host})
        assert response.status_code == 400, host
    # Probes address the process by its IP: /health answers whatever the host.
    health = await http.get("/health", headers={"Host": "10.1.2.3:8000"})
    assert health.json() == {"status": "ok"}


def test_host_matching() -> None:
    assert host_name("Example.COM:8000") == "example.com"
    assert host_name("[2001:db8::1]:443") == "2001:db8::1"
    assert host_name("example.com.") == "example.com"
    assert host_allowed("a.b.example.com", ["*.example.com"])
    assert not host_allowed("example.com", ["*.example.com"])
    assert not host_allowed("badexample.com", ["*.example.com"])
    assert host_allowed("anything", ["*"])
    assert not host_allowed("", ["example.com"])


def test_allowed_hosts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_HOSTS", "api.internal, *.example.com")
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://links.example.com/")
    settings = Settings(_env_file=None)

    assert settings.allowed_hosts == ["api.internal", "*.example.com"]
    assert settings.trusted_hosts() == [
        "links.example.com", "localhost", "127.0.0.1", "::1", "api.internal", "*.example.com",
    ]  # fmt: skip
    monkeypatch.setenv("ALLOWED_HOSTS", "")
    assert Settings(_env_file=None).allowed_hosts == []
