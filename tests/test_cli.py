"""The `nurture` command, run as a user runs it: a separate process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from nurture.apikeys import authenticate
from nurture.db.engine import SessionFactory


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATA_DIR")}
    env.update(overrides)
    return env


def nurture(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nurture.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=60,
    )


def test_validate_accepts_the_seed_journeys(examples_dir: Path, tmp_path: Path) -> None:
    files = sorted(str(p) for p in examples_dir.glob("*.json"))
    assert len(files) == 5  # the four seeds and the quickstart
    result = nurture("validate", *files, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"{f}: ok" for f in files]


def test_validate_reports_each_problem_with_file_and_path(
    examples_dir: Path, tmp_path: Path
) -> None:
    journey = json.loads((examples_dir / "benchmark-welcome.json").read_text())
    journey["steps"]["wait_1d"]["next"] = "clicked_purchse"  # a typo
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(journey))
    broken = tmp_path / "broken.json"
    broken.write_text('{"key": "x",')
    good = examples_dir / "register-coupon.json"

    result = nurture("validate", str(good), str(bad), str(broken), cwd=tmp_path)

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"{good}: ok" in lines
    assert any(
        line.startswith(f"{bad}: steps.wait_1d.next: ") and "clicked_purchse" in line
        for line in lines
    ), result.stdout
    assert any(line.startswith(f"{broken}: not valid JSON") for line in lines), result.stdout


def test_validate_fails_on_a_missing_file(tmp_path: Path) -> None:
    result = nurture("validate", "nowhere.json", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("nowhere.json: cannot read")


async def test_api_key_create_prints_a_working_secret_once(
    database_url: str, sessions: SessionFactory, tmp_path: Path
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nurture.cli",
        "api-key",
        "create",
        "--name",
        "crm-sync",
        cwd=tmp_path,
        env=_env(DATABASE_URL=database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()

    secret = stdout.decode().strip()
    assert re.fullmatch(r"nrt_[A-Za-z0-9_-]{40,}", secret), stdout
    assert "not stored" in stderr.decode()
    key = await authenticate(sessions, secret)
    assert key is not None and key.name == "crm-sync"
    assert await authenticate(sessions, secret + "x") is None


def test_the_command_ends_without_interpreter_finalization(tmp_path: Path) -> None:
    """Run as the program, `nurture` ends through os._exit once exit handlers ran and output
    is flushed: the interpreter's finalization, which a Temporal client's threads can abort
    (SIGABRT, "PyGILState_Release"), never starts. Objects are not finalized, exit handlers
    are run, and the exit code is the command's."""
    script = (
        "import atexit, sys\n"
        "from nurture.cli import main\n"
        "class Finalized:\n"
        "    def __del__(self): print('finalized', flush=True)\n"
        "keep = Finalized()\n"
        "atexit.register(lambda: print('exit handlers ran'))\n"
        "sys.argv = ['nurture', 'validate', 'missing.json']\n"
        "main()\n"
        "print('main returned')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=60,
    )

    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        "missing.json: cannot read: No such file or directory",
        "exit handlers ran",
    ]
