"""How long journey analytics take on a big journey.

    .venv/bin/python -m bench.analytics                    # 100,000 enrollments
    .venv/bin/python -m bench.analytics --enrollments 20000

Fills a fresh embedded PostgreSQL with one published journey (the quickstart: a welcome email,
a wait for a click, then a thanks or a reminder) and N enrollments as the engine leaves them:
their step rows, a welcome message each (5% skipped), human and machine opens, clicks on the
shop link, delivery reports, a few complaints and unsubscribes, half the contacts still
waiting. Then times, each `--repeat` times (the median is reported): the analytics of the
journey (`GET /v1/journeys/{key}/analytics` without the HTTP), the same for one version, 30
days of daily series, the flowchart SVG and the weekly review. docs/benchmarks.md has figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

from bench.stack import embedded_postgres, log
from nurture.analytics.daily import daily_series
from nurture.analytics.journey import (
    find_journey,
    graph_order,
    journey_analytics,
    journey_definition,
)
from nurture.analytics.review import weekly_review
from nurture.console.graph import flowchart_svg
from nurture.db.engine import create_engine, session_factory
from nurture.db.migrate import upgrade_async
from nurture.db.models import utcnow
from nurture.journeys.publishing import publish, save_draft

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "journeys" / "quickstart.json"

# One statement per table, generated in Postgres: N contacts and enrollments spread over the
# last 30 days; the first half clicked (completed through mark_interest and thanks), the rest
# wait at clicked_shop.
FILL = [
    """INSERT INTO contacts (id, external_id, email, fields, tags, consent, created_at, updated_at)
       SELECT md5('c' || i)::uuid, 'c' || i, 'c' || i || '@example.com', '{}', '{}', '{}',
              now(), now() FROM generate_series(1, :n) i""",
    """INSERT INTO enrollments (id, journey_id, journey_version_id, version, contact_id,
              workflow_id, status, current_step, exit_reason, enrolled_at, updated_at, ended_at,
              contact_stale)
       SELECT md5('e' || i)::uuid, :journey_id, :version_id, 1, md5('c' || i)::uuid,
              'journey:quickstart:contact:' || i,
              CASE WHEN i % 2 = 0 THEN 'completed' ELSE 'active' END,
              CASE WHEN i % 2 = 0 THEN 'thanks' ELSE 'clicked_shop' END, NULL,
              now() - (i % 30) * interval '1 day', now(),
              CASE WHEN i % 2 = 0 THEN now() - (i % 30) * interval '1 day' + interval '1 hour' END,
              false
       FROM generate_series(1, :n) i""",
    """INSERT INTO enrollment_steps (enrollment_id, step_id, visit, step_type, entered_at, left_at,
              outcome)
       SELECT md5('e' || i)::uuid, s.step, 1, s.kind, now(), CASE WHEN s.last THEN NULL ELSE now() END,
              s.outcome
       FROM generate_series(1, :n) i
       CROSS JOIN LATERAL (VALUES
           ('welcome', 'send_email', false, 'sent'),
           ('clicked_shop', 'wait_for', i % 2 = 1, CASE WHEN i % 2 = 0 THEN 'event' END),
           ('mark_interest', 'update_contact', false, 'done'),
           ('thanks', 'send_email', false, 'sent')
       ) AS s(step, kind, last, outcome)
       WHERE s.step IN ('welcome', 'clicked_shop') OR i % 2 = 0""",
    """INSERT INTO messages (id, idempotency_key, enrollment_id, contact_id, step_id, channel,
              template, status, reason, provider, created_at, sent_at)
       SELECT md5('m' || i || s.step)::uuid, i || ':' || s.step, md5('e' || i)::uuid,
              md5('c' || i)::uuid, s.step, 'email', 'quickstart-' || s.step,
              CASE WHEN i % 20 = 1 THEN 'skipped' ELSE 'sent' END,
              CASE WHEN i % 20 = 1 THEN 'email_unsubscribed' END, 'sendgrid',
              now() - (i % 30) * interval '1 day', now() - (i % 30) * interval '1 day'
       FROM generate_series(1, :n) i
       CROSS JOIN (VALUES ('welcome'), ('thanks')) AS s(step)
       WHERE s.step = 'welcome' OR i % 2 = 0""",
    """INSERT INTO events (id, dedupe_key, contact_id, kind, message_id, link, properties,
              machine, occurred_at, received_at)
       SELECT gen_random_uuid(), 'ev' || i || e.kind || e.machine, md5('c' || i)::uuid, e.kind,
              md5('m' || i || 'welcome')::uuid, e.link, '{}', e.machine,
              now() - (i % 30) * interval '1 day', now()
       FROM generate_series(1, :n) i
       CROSS JOIN (VALUES ('open', NULL, true), ('open', NULL, false), ('click', 'shop', false))
           AS e(kind, link, machine)
       WHERE (e.kind = 'open' AND e.machine AND i % 3 = 0)
          OR (e.kind = 'open' AND NOT e.machine AND i % 4 <> 1)
          OR (e.kind = 'click' AND i % 2 = 0)""",
    """INSERT INTO webhook_events (id, provider, dedupe_key, kind, provider_message_id,
              message_id, payload, occurred_at, received_at, processed_at)
       SELECT gen_random_uuid(), 'sendgrid', 'wh' || i || k.kind, k.kind,
              NULL, md5('m' || i || 'welcome')::uuid,
              jsonb_build_object('permanent', k.kind = 'bounced'), now(), now(), now()
       FROM generate_series(1, :n) i
       CROSS JOIN (VALUES ('delivered'), ('bounced'), ('complained')) AS k(kind)
       WHERE i % 20 <> 1 AND (k.kind = 'delivered' OR (k.kind = 'bounced' AND i % 97 = 0)
             OR (k.kind = 'complained' AND i % 211 = 0))""",
    """INSERT INTO suppressions (id, contact_id, channel, reason, source, message_id, created_at)
       SELECT gen_random_uuid(), md5('c' || i)::uuid, 'email', 'unsubscribed', 'unsubscribe_link',
              md5('m' || i || 'welcome')::uuid, now()
       FROM generate_series(1, :n) i WHERE i % 50 = 3""",
]


async def run(enrollments: int, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="nurture-bench-analytics-") as root:
        async with embedded_postgres(Path(root)) as (url, _pid):
            await upgrade_async(url)
            engine = create_engine(url)
            sessions = session_factory(engine)
            definition = json.loads(EXAMPLE.read_text())
            async with sessions.begin() as session:
                for key in ("welcome", "thanks", "reminder"):
                    await session.execute(
                        text(
                            "INSERT INTO templates (id, key, channel, subject, text, version, "
                            "created_at, updated_at) VALUES (gen_random_uuid(), :k, 'email', "
                            "'s', 't', 1, now(), now())"
                        ),
                        {"k": f"quickstart-{key}"},
                    )
                await save_draft(session, definition)
                version = await publish(session, "quickstart")
            log(f"filling {enrollments:,} enrollments")
            started = time.perf_counter()
            async with sessions.begin() as session:
                for statement in FILL:
                    await session.execute(
                        text(statement),
                        {
                            "n": enrollments,
                            "journey_id": version.journey_id,
                            "version_id": version.id,
                        },
                    )
            async with engine.begin() as conn:
                await conn.execute(text("ANALYZE"))
            log(f"filled in {time.perf_counter() - started:.1f} s")

            async def analytics() -> None:
                async with sessions() as session:
                    await journey_analytics(session, "quickstart")

            async def one_version() -> None:
                async with sessions() as session:
                    await journey_analytics(session, "quickstart", 1, with_goal=False)

            async def daily() -> None:
                today = utcnow().date()
                async with sessions() as session:
                    await daily_series(
                        session, "quickstart", today - timedelta(days=29), today, "Europe/Warsaw"
                    )

            async def flowchart() -> None:
                async with sessions() as session:
                    result = await journey_analytics(
                        session, "quickstart", with_goal=False, with_sends=False
                    )
                    journey = await find_journey(session, "quickstart")
                    parsed, _ = await journey_definition(session, journey, None)
                    assert parsed is not None
                    flowchart_svg(
                        parsed,
                        graph_order(parsed),
                        {s.step_id: s for s in result.steps},
                        "/s/{step}",
                    )

            async def review() -> None:
                async with sessions() as session:
                    await weekly_review(session, utcnow())

            figures: dict[str, float] = {}
            for name, job in (
                ("analytics (all versions, with goal)", analytics),
                ("analytics (one version, no goal)", one_version),
                ("daily series, 30 days", daily),
                ("flowchart (step counts + SVG)", flowchart),
                ("weekly review (all journeys)", review),
            ):
                timings = []
                for _ in range(repeat):
                    begin = time.perf_counter()
                    await job()
                    timings.append(time.perf_counter() - begin)
                figures[name] = statistics.median(timings) * 1000
                log(f"{name}: median {figures[name]:.0f} ms over {repeat}")
            async with sessions() as session:
                check = await journey_analytics(session, "quickstart")
            log(
                "check: "
                + json.dumps(
                    {
                        "enrollments": check.enrollments,
                        "welcome": {
                            k: getattr(check.sends[0], k)
                            for k in ("sent", "opened", "clicked", "bounced", "complained")
                        },
                    }
                )
            )
            await engine.dispose()
            return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enrollments", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    figures = asyncio.run(run(args.enrollments, args.repeat))
    print(json.dumps({"enrollments": args.enrollments, "median_ms": figures}, indent=2))


if __name__ == "__main__":
    main()
