"""docker-compose.yml and the Dockerfile, checked against the code they run (no Docker here):
every variable set on a Nurture service is a setting, every command is a `nurture` command."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from nurture.cli import build_parser
from nurture.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("setup", "worker", "api")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- NAME=value` form
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _nurture_commands(command: list[str] | str) -> list[list[str]]:
    """The `nurture ...` invocations in a command, also inside `sh -c "a && b"`."""
    words = shlex.split(command) if isinstance(command, str) else list(command)
    if words[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in re.split(r"&&|;|\|\|", words[2]) if part.strip()]
    return [words]


def _assert_is_cli_command(words: list[str]) -> None:
    assert words and words[0] == "nurture", f"not a nurture command: {words}"
    try:
        build_parser().parse_args(words[1:])
    except SystemExit:
        pytest.fail(f"`{shlex.join(words)}` is not a valid nurture command")


def test_compose_has_the_whole_stack(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= {"postgres", "temporal", "temporal-ui", *APP_SERVICES}
    for name in ("postgres", "temporal", "temporal-ui"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
    assert services["postgres"]["image"].startswith("postgres:16")
    temporal_env = _environment(services["temporal"])
    assert temporal_env["DB"] == "postgres12"
    assert temporal_env["POSTGRES_SEEDS"] == "postgres"
    assert {"DB_PORT", "POSTGRES_USER", "POSTGRES_PWD"} <= set(temporal_env)
    assert _environment(services["temporal-ui"])["TEMPORAL_ADDRESS"] == "temporal:7233"


def test_app_services_are_configured_only_by_settings(
    services: dict[str, dict[str, Any]],
) -> None:
    # pydantic-settings matches environment names to fields case-insensitively.
    fields = {name.lower() for name in Settings.model_fields}
    for name in APP_SERVICES:
        env = _environment(services[name])
        assert env, f"{name} sets no environment"
        unknown = sorted(key for key in env if key.lower() not in fields)
        assert not unknown, f"{name} sets variables no setting reads: {unknown}"
        assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
        assert {"TEMPORAL_NAMESPACE", "TEMPORAL_TASK_QUEUE", "TEMPORAL_UI_URL"} <= set(env)


def test_compose_requires_a_secret_key(services: dict[str, dict[str, Any]]) -> None:
    """`${SECRET_KEY:?message}`: compose refuses to start without it (the API and the worker
    would refuse too, later); the message says how to make one, and has no `$` in it, which
    compose would read as a variable."""
    for name in APP_SERVICES:
        value = _environment(services[name])["SECRET_KEY"]
        match = re.fullmatch(r"\$\{SECRET_KEY:\?([^$}]+)\}", value)
        assert match, f"{name}: SECRET_KEY must be required, not {value!r}"
        assert "secrets.token_urlsafe(32)" in match.group(1)


def test_app_services_use_the_image_built_here(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        build = services[name].get("build")
        assert build is not None, f"{name} is not built from this repository"
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (ROOT / context / dockerfile).is_file()


def test_commands_are_nurture_commands(services: dict[str, dict[str, Any]]) -> None:
    used = []
    for name in APP_SERVICES:
        for words in _nurture_commands(services[name]["command"]):
            _assert_is_cli_command(words)
            used.append(words[1])
    assert used == ["migrate", "setup-temporal", "worker", "api"]
    api_command = services["api"]["command"]
    assert api_command[api_command.index("--host") + 1] == "0.0.0.0"


def test_dependencies_wait_for_health_and_setup(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    for name in ("worker", "api"):
        assert services[name]["depends_on"]["setup"]["condition"] == (
            "service_completed_successfully"
        )


def test_dockerfile_runs_the_cli_as_a_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0"), "the image must not run as root"
    for instruction in ("CMD", "ENTRYPOINT"):
        for match in re.findall(rf"^{instruction} (.+)$", dockerfile, re.M):
            _assert_is_cli_command(json.loads(match))
    # Everything `pip install .` reads is copied into the image and not ignored.
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (
        "pyproject.toml",
        "README.md",
        "worker.py",
        "nurture",
        "api",
        "workflows",
        "activities",
    ):
        assert needed in dockerfile and needed not in ignored


def test_prometheus_scrapes_the_api_and_the_workers(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert ":" in prometheus["image"] and not prometheus["image"].endswith(":latest")
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["nurture-api"]
    assert api["dns_sd_configs"][0]["names"] == ["api"]
    assert api["authorization"]["credentials_file"] == "/tmp/metrics_token"
    assert "/tmp/metrics_token" in " ".join(prometheus["entrypoint"])
    worker_env = _environment(services["worker"])
    port = int(worker_env["WORKER_METRICS_ADDRESS"].rsplit(":", 1)[1])
    assert jobs["nurture-worker"]["dns_sd_configs"][0]["port"] == port
    assert "METRICS_TOKEN:?" in _environment(services["api"])["METRICS_TOKEN"]


def test_compose_temporal_has_the_dynamic_config_of_nurture_dev(
    services: dict[str, dict[str, Any]],
) -> None:
    """The compose server gets, from a mounted file, every --dynamic-config-value that `nurture
    dev` gives its dev server (batch signal rate, eager workflow start)."""
    from nurture.tracing import dev_server_flags

    temporal = services["temporal"]
    path = _environment(temporal)["DYNAMIC_CONFIG_FILE_PATH"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in temporal["volumes"]}  # target: source
    source = mounts[f"/etc/temporal/{path}"]
    config = yaml.safe_load((ROOT / source).read_text())
    flags = dev_server_flags()
    wanted = [flags[i + 1] for i, flag in enumerate(flags) if flag == "--dynamic-config-value"]
    assert wanted, "nurture dev sets no dynamic config"
    for setting in wanted:
        name, value = setting.split("=", 1)
        assert name in config, f"{name} missing from {source}"
        assert [str(v["value"]).lower() for v in config[name]] == [value.lower()], name
