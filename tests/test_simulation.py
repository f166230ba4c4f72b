"""Simulations: the real enrollment workflow in virtual time, on stand-in activities."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert

from nurture.db.engine import SessionFactory
from nurture.db.models import Template
from nurture.simulation.prepare import simulate
from nurture.simulation.report import SimulationReport
from nurture.simulation.script import SimulationRequest
from tests.support import example, publish_journey


async def _find_contact(session: Any, ref: str, where: str) -> Any:
    from api.contact_refs import find_contact_id

    return await find_contact_id(session, ref, where)


async def run(sessions: SessionFactory, journey: str, **request: Any) -> SimulationReport:
    return await simulate(
        sessions,
        journey,
        SimulationRequest.model_validate(request),
        _find_contact,
        "http://nurture.test",
    )


async def test_quickstart_click_and_no_click(sessions: SessionFactory) -> None:
    await publish_journey(sessions, example("quickstart"))
    async with sessions.begin() as session:
        await session.execute(
            insert(Template)
            .values(
                key="quickstart-welcome",
                channel="email",
                subject="Welcome, {{ fields.first_name }}",
                html='<p>Hi</p><a data-link="shop" href="https://shop.example.com/">Shop</a>',
                text="Hi {{ fields.first_name }}",
            )
            .on_conflict_do_update(
                index_elements=["key", "channel"],
                set_={
                    "subject": "Welcome, {{ fields.first_name }}",
                    "html": '<p>Hi</p><a data-link="shop" href="https://shop.example.com/">Shop</a>',
                    "text": "Hi {{ fields.first_name }}",
                },
            )
        )
    report = await run(
        sessions,
        "quickstart",
        contacts=[
            {
                "label": "clicker",
                "email": "a@example.com",
                "fields": {"first_name": "Ada"},
                "behaviour": [{"clicks": "welcome", "link": "shop", "after": "2m"}],
            },
            {"label": "idle", "email": "b@example.com"},
        ],
    )
    clicker, idle = report.contacts
    print("WALL", report.wall_seconds, clicker.path[0].offset, clicker.path[2].offset)
    assert [s.step for s in clicker.path] == ["welcome", "clicked_shop", "mark_interest", "thanks"]
    assert [s.step for s in idle.path] == ["welcome", "clicked_shop", "reminder"]
