"""`nurture simulate FILE`, run as a user runs it: a separate process against the database."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

from nurture.db.engine import SessionFactory
from tests.support import example, publish_journey
from tests.test_cli import _env


async def _simulate(database_url: str, cwd: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nurture.cli",
        "simulate",
        *args,
        cwd=cwd,
        env=_env(DATABASE_URL=database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_simulate_a_file(database_url: str, sessions: SessionFactory, tmp_path: Path) -> None:
    await publish_journey(sessions, example("quickstart"))
    script = {
        "journey": "quickstart",
        "contacts": [
            {
                "label": "ada",
                "email": "ada@example.com",
                "behaviour": [{"clicks": "welcome", "link": "shop", "after": "3m"}],
            },
            {"label": "bob", "email": "bob@example.com"},
        ],
    }
    (tmp_path / "sim.json").write_text(json.dumps(script))

    code, out, err = await _simulate(database_url, tmp_path, "sim.json")
    assert code == 0, err
    assert "quickstart (draft): 2 contact(s)" in out
    assert re.search(r"ada: completed after 3m(\d+s)?, 2 message\(s\)", out), out
    assert re.search(r"bob: completed after 10m(\d+s)?, 2 message\(s\)", out), out
    assert "wait_for: timeout (10m)" in out

    code, out, err = await _simulate(database_url, tmp_path, "sim.json", "--json", "--version", "1")
    assert code == 0, err
    report = json.loads(out)
    assert report["version"] == "1"
    assert [s["step"] for s in report["contacts"][0]["path"]][-1] == "thanks"


async def test_simulate_names_what_is_wrong(
    database_url: str, sessions: SessionFactory, tmp_path: Path
) -> None:
    await publish_journey(sessions, example("quickstart"))
    script = {"journey": "quickstart", "contacts": [{"contact": "nobody"}]}
    (tmp_path / "sim.json").write_text(json.dumps(script))
    code, out, err = await _simulate(database_url, tmp_path, "sim.json")
    assert code == 1 and out == ""
    assert "contacts.0.contact: no contact 'nobody'" in err

    (tmp_path / "bad.json").write_text(json.dumps({"journey": "quickstart", "contacts": []}))
    code, out, err = await _simulate(database_url, tmp_path, "bad.json")
    assert code == 1 and "contacts:" in err
