"""Wall time of journey simulations (docs/simulation.md): a 180-day journey for one contact,
and for 100 contacts in one call.

    .venv/bin/python -m bench.simulation               # 5 timed runs of each, after a warm-up
    .venv/bin/python -m bench.simulation --runs 10 --contacts 100

It times `nurture.simulation.runner.run_simulation` on a plan built in memory (the journey,
its templates, inline test contacts with scripted behaviour): everything a simulation does
after the database reads, i.e. its own time-skipping test server, the worker, the real
`JourneyEnrollment` with the stand-ins, the renders and the report. The first call of a
process also starts the render processes (as an API process's first render does); it is
reported apart as "cold". Nothing else is needed: no PostgreSQL, no dev server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from datetime import timedelta
from typing import Any

from nurture.content.rendering import TemplateContent
from nurture.db.models import Contact
from nurture.journeys.definition import JourneyDefinition, template_references
from nurture.simulation.report import SimulationReport
from nurture.simulation.runner import Plan, PreparedContact, run_simulation
from nurture.simulation.script import SimulationBehaviour

# The 180-day member journey of Benchmark's automation blog (seed 001): a welcome, tips, a
# check-in on engagement, a branch on a purchase, reminders spread over six months.
MEMBER_JOURNEY: dict[str, Any] = {
    "key": "member-180",
    "name": "180 days as a member",
    "goal": {"name": "upgraded", "criteria": {"type": "field", "field": "plan", "value": "pro"}},
    "start": "welcome",
    "steps": {
        "welcome": {"type": "send_email", "template": "member-welcome", "next": "opened"},
        "opened": {
            "type": "wait_for",
            "event": {"type": "open", "step": "welcome"},
            "timeout": "3d",
            "on_event": "tag_active",
            "on_timeout": "nudge",
        },
        "nudge": {"type": "send_email", "template": "member-nudge", "next": "week_2"},
        "tag_active": {"type": "update_contact", "add_tags": ["active"], "next": "week_2"},
        "week_2": {"type": "wait", "duration": "11d", "next": "tips"},
        "tips": {"type": "send_email", "template": "member-tips", "next": "month_1"},
        "month_1": {"type": "wait", "duration": "16d", "next": "bought"},
        "bought": {
            "type": "branch",
            "rules": [
                {"condition": {"type": "event", "name": "purchase"}, "next": "thanks"},
                {"condition": {"type": "clicked", "step": "tips", "link": "shop"}, "next": "offer"},
            ],
            "default": "survey",
        },
        "thanks": {"type": "send_email", "template": "member-thanks", "next": "month_3"},
        "offer": {"type": "send_email", "template": "member-offer", "next": "month_3"},
        "survey": {"type": "send_email", "template": "member-survey", "next": "month_3"},
        "month_3": {"type": "wait", "duration": "60d", "next": "count"},
        "count": {"type": "update_contact", "increment": {"check_ins": 1}, "next": "month_6"},
        "month_6": {"type": "wait", "duration": "93d", "next": "anniversary"},
        "anniversary": {"type": "send_email", "template": "member-180", "next": "vip"},
        "vip": {"type": "add_to_list", "list": "members-180"},
    },
}

BEHAVIOUR = [
    {"opens": "welcome", "after": "5h"},
    {"clicks": "tips", "link": "shop", "after": "2d"},
    {"set": {"city": "Warsaw"}, "at": "100d"},
]


def plan(contacts: int) -> Plan:
    definition = JourneyDefinition.model_validate(MEMBER_JOURNEY)
    templates = {
        (channel, key): TemplateContent(
            key=key,
            channel=channel,
            version=1,
            subject="{{ fields.first_name | default('Hello') }}: " + key,
            html=(
                "<p>Hi {{ fields.first_name }}</p>"
                '<a data-link="shop" href="https://shop.example.com/">Shop</a>'
                '<a href="https://example.com/blog">Blog</a>'
            ),
            text="Hi {{ fields.first_name }}, see https://shop.example.com/",
            template_id=uuid.uuid4(),
        )
        for channel, key in template_references(definition)
    }
    behaviours = [SimulationBehaviour.model_validate(b) for b in BEHAVIOUR]
    return Plan(
        journey_key=definition.key,
        version="draft",
        version_number=0,
        definition=definition,
        templates=templates,
        list_keys={"members-180"},
        existing_segments=set(),
        contacts=[
            PreparedContact(
                label=f"member {i}",
                contact=Contact(
                    id=uuid.uuid4(),
                    email=f"m{i}@example.com",
                    fields={"first_name": f"M{i}"},
                    tags=[],
                    consent={},
                ),
                lists=[],
                behaviours=behaviours,
            )
            for i in range(contacts)
        ],
        horizon=timedelta(days=400),
        public_base_url="http://127.0.0.1:8000",
    )


def check(report: SimulationReport) -> None:
    """Each contact went the whole way, as scripted: a benchmark of a broken run is no figure."""
    for contact in report.contacts:
        steps = [s.step for s in contact.path]
        assert contact.status == "completed", (contact.status, contact.reason)
        assert steps == [
            "welcome", "opened", "tag_active", "week_2", "tips", "month_1", "bought",
            "offer", "month_3", "count", "month_6", "anniversary", "vip",
        ], steps  # fmt: skip
        assert contact.duration is not None and contact.duration.startswith("180d"), contact


async def timed(contacts: int) -> float:
    began = time.perf_counter()
    check(await run_simulation(plan(contacts)))
    return time.perf_counter() - began


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--contacts", type=int, default=100)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    cold = await timed(1)
    one = [await timed(1) for _ in range(args.runs)]
    many = [await timed(args.contacts) for _ in range(args.runs)]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        # Other work on the machine slows every figure: the load before and after the runs.
        "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "one_contact_cold_s": round(cold, 3),
        "one_contact_s": {"median": round(statistics.median(one), 3), "max": round(max(one), 3)},
        f"{args.contacts}_contacts_s": {
            "median": round(statistics.median(many), 3),
            "max": round(max(many), 3),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
