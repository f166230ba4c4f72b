"""Segment sweeps over 1,000,000 contacts: a full sweep against an incremental one, in one run.

    .venv/bin/python -m bench.sweep                      # 1,000,000 contacts, about 5 minutes
    .venv/bin/python -m bench.sweep --contacts 100000    # a smaller run

Embedded PostgreSQL only (a sweep is Postgres work). Contacts and one `login` event each are
generated with INSERT ... SELECT generate_series (logins spread over the last 10 days, one
contact in 10 tagged `vip`), then two segments are watched by publishing a `segment_entered`
journey on each: `lapsed` ("no login in the last 3 days", about 70 % of everyone) and
`lapsed-vips` (the same among VIPs). Then, per segment, timed:

1. the snapshot taken when watching starts (at publish);
2. the first sweep, in full (`nurture.audience.segments.incremental` has nothing to go on);
3. an incremental sweep after `--changed` contacts changed through the change path (their tags
   and a `contact_changes` row, as the API writes them) and `--hours` of time passed since the
   last sweep (the sweep's record is moved back: the 3-day window has moved over an hour's
   worth of logins, about 1/240 of the contacts);
4. a full sweep of the same state (the sweep's record deleted), for the ratio.

docs/benchmarks.md explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.stack import embedded_postgres, log
from bench.workload import publish_journey
from nurture.audience.segments.membership import sweep
from nurture.db.engine import SessionFactory, create_engine, session_factory
from nurture.db.migrate import upgrade_async

SEGMENTS: dict[str, dict[str, Any]] = {
    "lapsed": {"type": "event", "name": "login", "max_count": 0, "within_days": 3},
    "lapsed-vips": {
        "type": "all",
        "conditions": [
            {"type": "tag", "tag": "vip", "op": "has"},
            {"type": "event", "name": "login", "max_count": 0, "within_days": 3},
        ],
    },
}


@dataclass
class Figures:
    contacts: int
    events: int
    changed: int
    hours: float
    generate_seconds: float = 0.0
    watch_seconds: dict[str, float] | None = None
    members: dict[str, int] | None = None
    first_full_seconds: float = 0.0
    incremental_seconds: float = 0.0
    incremental_full: int = -1  # segments the incremental sweep compared in full (want 0)
    incremental_entered: int = 0
    incremental_left: int = 0
    candidates: int = 0  # contacts the incremental sweep re-checked (per segment, the union)
    full_seconds: float = 0.0
    full_entered: int = 0
    full_left: int = 0


async def timed(what: str, work: Any) -> tuple[Any, float]:
    began = time.perf_counter()
    result = await work
    seconds = time.perf_counter() - began
    log(f"{what}: {seconds:.2f} s")
    return result, seconds


async def execute(sessions: SessionFactory, sql: str, **params: Any) -> None:
    async with sessions.begin() as session:
        await session.execute(text(sql), params)


async def scalar(sessions: SessionFactory, sql: str, **params: Any) -> Any:
    async with sessions() as session:
        return await session.scalar(text(sql), params)


async def generate(sessions: SessionFactory, contacts: int) -> None:
    await execute(
        sessions,
        "INSERT INTO contacts (id, external_id, email, fields, tags, consent, created_at,"
        " updated_at) SELECT gen_random_uuid(), 'c' || g, 'c' || g || '@bench.test', '{}',"
        " CASE WHEN g % 10 = 0 THEN '{vip}'::text[] ELSE '{}'::text[] END, '{}',"
        " now() - interval '30 days', now() - interval '30 days'"
        " FROM generate_series(1, :n) g",
        n=contacts,
    )
    await execute(
        sessions,
        "INSERT INTO events (id, dedupe_key, contact_id, kind, name, properties, machine,"
        " occurred_at, received_at) SELECT gen_random_uuid(), 'login:' || c.external_id, c.id,"
        " 'custom', 'login', '{}', false, now() - random() * interval '10 days',"
        " now() - interval '10 days' FROM contacts c",
    )
    await execute(sessions, "ANALYZE")


async def change(sessions: SessionFactory, count: int) -> None:
    """`count` contacts change through the change path: their tags, and the change's row."""
    await execute(
        sessions,
        "WITH picked AS (SELECT id FROM contacts ORDER BY random() LIMIT :n),"
        " changed AS (UPDATE contacts c SET tags = CASE WHEN 'vip' = ANY(c.tags)"
        " THEN '{}'::text[] ELSE '{vip}'::text[] END, updated_at = now()"
        " FROM picked WHERE c.id = picked.id RETURNING c.id)"
        " INSERT INTO contact_changes (contact_id, at, source, changes, joined_lists, reload,"
        " announced_at) SELECT id, now(), 'bench', '{\"tags_added\": [\"vip\"]}', '{}', true,"
        " now() FROM changed",
        n=count,
    )


async def candidates(sessions: SessionFactory, hours: float) -> int:
    """How many contacts an incremental sweep re-checks: changed since the last sweep, or with a
    login the 3-day window moved over (what `incremental.crossing` selects)."""
    return int(
        await scalar(
            sessions,
            "SELECT count(*) FROM (SELECT contact_id FROM contact_changes"
            " WHERE at >= (SELECT min(swept_at) FROM segment_sweeps) - interval '5 minutes'"
            " UNION SELECT contact_id FROM events WHERE kind = 'custom' AND name = 'login' AND"
            " (occurred_at BETWEEN (SELECT min(swept_at) FROM segment_sweeps) - interval '3 days'"
            " AND now() - interval '3 days' OR occurred_at BETWEEN"
            " (SELECT min(swept_at) FROM segment_sweeps) AND now())) c",
        )
        or 0
    )


async def run(options: argparse.Namespace) -> Figures:
    figures = Figures(options.contacts, options.contacts, options.changed, options.hours)
    with tempfile.TemporaryDirectory(prefix="nurture-bench-sweep-") as tmp:
        async with embedded_postgres(Path(tmp)) as (database_url, _pid):
            await upgrade_async(database_url)
            engine = create_engine(database_url)
            sessions = session_factory(engine)
            try:
                _, figures.generate_seconds = await timed(
                    f"generated {options.contacts:,} contacts and logins",
                    generate(sessions, options.contacts),
                )
                figures.watch_seconds = {}
                for key, filter in SEGMENTS.items():
                    await execute(
                        sessions,
                        "INSERT INTO segments (id, key, name, filter, created_at, updated_at)"
                        " VALUES (gen_random_uuid(), :key, :key, CAST(:filter AS jsonb), now(),"
                        " now())",
                        key=key,
                        filter=json.dumps(filter),
                    )
                    journey = {
                        "key": f"welcome-{key}",
                        "name": key,
                        "trigger": {"type": "segment_entered", "segment": key},
                        "start": "done",
                        "steps": {"done": {"type": "exit", "reason": "done"}},
                    }
                    _, figures.watch_seconds[key] = await timed(
                        f"watching {key} (its snapshot)", publish_journey(sessions, journey)
                    )
                figures.members = {
                    key: int(
                        await scalar(
                            sessions,
                            "SELECT count(*) FROM segment_members m JOIN segments s"
                            " ON s.id = m.segment_id WHERE s.key = :key",
                            key=key,
                        )
                    )
                    for key in SEGMENTS
                }
                _, figures.first_full_seconds = await timed("first sweep (full)", sweep(sessions))

                await change(sessions, options.changed)
                await execute(
                    sessions,
                    "UPDATE segment_sweeps SET swept_at = swept_at - make_interval(secs => :s),"
                    " full_swept_at = full_swept_at - make_interval(secs => :s)",
                    s=options.hours * 3600,
                )
                figures.candidates = await candidates(sessions, options.hours)
                report, figures.incremental_seconds = await timed(
                    f"incremental sweep ({figures.candidates:,} candidates)", sweep(sessions)
                )
                figures.incremental_full = report.full
                figures.incremental_entered, figures.incremental_left = report.entered, report.left

                await execute(sessions, "DELETE FROM segment_sweeps")
                report, figures.full_seconds = await timed(
                    "full sweep of the same state", sweep(sessions)
                )
                figures.full_entered, figures.full_left = report.entered, report.left
            finally:
                await engine.dispose()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--changed", type=int, default=1_000, help="contacts changed (1000)")
    parser.add_argument("--hours", type=float, default=1.0, help="time since the last sweep (1)")
    parser.add_argument(
        "--output", type=Path, default=Path(tempfile.gettempdir()) / "nurture-bench-sweep.json"
    )
    options = parser.parse_args(argv)
    figures = asyncio.run(run(options))
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(asdict(figures), indent=2) + "\n")
    ratio = figures.full_seconds / figures.incremental_seconds if figures.incremental_seconds else 0
    print(
        f"segment sweep over {figures.contacts:,} contacts, 2 watched segments"
        f" (members {figures.members}):\n"
        f"  first sweep (full)           {figures.first_full_seconds:8.2f} s\n"
        f"  incremental sweep            {figures.incremental_seconds:8.2f} s"
        f"  ({figures.changed:,} changed, {figures.hours:g} h of time; {figures.candidates:,}"
        f" contacts re-checked; entered {figures.incremental_entered}, left"
        f" {figures.incremental_left}; {figures.incremental_full} segments in full)\n"
        f"  full sweep, same state       {figures.full_seconds:8.2f} s"
        f"  (entered {figures.full_entered}, left {figures.full_left})\n"
        f"  full / incremental           {ratio:8.1f} x\n"
        f"JSON: {options.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
