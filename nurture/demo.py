"""`nurture dev --demo`: enough data to try every part of the product at once.

The lists the seed journeys use, a template for every send step of `examples/journeys/*.json`,
those journeys published, a few contacts and an API key named "demo". Only what is missing is
added, so a second start changes nothing (and never overwrites what was edited since).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from nurture.apikeys import create_api_key
from nurture.boot import CommandError
from nurture.db.engine import SessionFactory
from nurture.db.models import ApiKey, Contact, ContactList, Journey, Segment, Template
from nurture.errors import NurtureError
from nurture.journeys.publishing import publish, save_draft

API_KEY_NAME = "demo"

LISTS = {"newsletter": "Newsletter", "paid-customers": "Paid customers"}
# The segments the seed journeys name (the Dynamics seed starts on "top-customers").
SEGMENTS: dict[str, tuple[str, dict[str, object]]] = {
    "top-customers": ("Top customers", {"type": "tag", "tag": "vip", "op": "has"}),
}


@dataclass(frozen=True)
class Content:
    subject: str | None
    text: str
    html: str | None = None


def _email(subject: str, *paragraphs: str) -> Content:
    html = "".join(f"<p>{p}</p>" for p in paragraphs)
    # The text part is not HTML: a link reads "label (url)" there.
    text = _ANCHOR.sub(r"\g<label> (\g<url>)", "\n\n".join(paragraphs))
    return Content(subject=subject, text=text, html=html)


_ANCHOR = re.compile(r'<a href="(?P<url>[^"]+)"[^>]*>(?P<label>[^<]*)</a>')


def _link(label: str, url: str, name: str | None = None) -> str:
    """A link; `name` is what a journey's `clicked` condition calls it (`data-link`)."""
    named = f' data-link="{name}"' if name else ""
    return f'<a href="{url}"{named}>{label}</a>'


# Keyed by (channel, template key) as the seed journeys name them.
TEMPLATES: dict[tuple[str, str], Content] = {
    # The README walk-through clicks this link in the console's mailbox.
    ("email", "quickstart-welcome"): _email(
        "Welcome, {{ fields.first_name | default('friend') }}",
        "Thanks for joining! Our shop has something for you.",
        f"{_link('Visit the shop', 'https://example.com/shop', 'shop')}",
    ),
    ("email", "welcome"): _email(
        "Welcome aboard",
        "Thanks for signing up! Here is what to expect: a short note now and then, never spam.",
        f"Ready to go further? {_link('See the plans', 'https://example.com/pricing', 'purchase')}.",
    ),
    ("email", "welcome-follow-up"): _email(
        "Did you have a look around?",
        "A day in, a few ideas to get the most out of your account.",
        f"Questions? {_link('Our help centre', 'https://example.com/help')} has answers.",
    ),
    ("email", "product-announcement"): _email(
        "Something new is coming",
        "You are among our best customers, so you hear it first: a new product launches soon.",
        f"{_link('Take a first look', 'https://example.com/new-product', 'product')}.",
    ),
    ("sms", "launch-day"): Content(
        subject=None, text="It's launch day! The new product is live: https://example.com/new"
    ),
    ("email", "nurture-intro"): _email(
        "How teams like yours save hours a week",
        "A quick introduction to what we do and who it is for.",
    ),
    ("email", "nurture-case-study"): _email(
        "Case study: from spreadsheets to automation",
        "How one team replaced manual follow-ups with journeys, and what it changed for them.",
    ),
    ("email", "nurture-offer"): _email(
        "An offer for you: 20% off your first year",
        f"Use code NURTURE20 at {_link('checkout', 'https://example.com/checkout')}.",
    ),
    ("email", "coupon"): _email(
        "Here is 10% off to get you started",
        "We noticed you have not been back yet. Your coupon: WELCOME10.",
    ),
    ("sms", "care"): Content(
        subject=None, text="Need a hand getting started? Reply to this message and we'll help."
    ),
}

CONTACTS: list[dict[str, Any]] = [
    {
        "external_id": "demo-1",
        "email": "ada@example.com",
        "phone": "+15555550101",
        "time_zone": "Europe/London",
        "fields": {"first_name": "Ada", "lifecycle_stage": "lead", "customer_type": "free"},
    },
    {
        "external_id": "demo-2",
        "email": "grace@example.com",
        "phone": "+15555550102",
        "time_zone": "America/New_York",
        "fields": {"first_name": "Grace", "lifecycle_stage": "lead", "customer_type": "trial"},
    },
    {
        "external_id": "demo-3",
        "email": "alan@example.com",
        "phone": "+15555550103",
        "time_zone": "Europe/London",
        "fields": {
            "first_name": "Alan",
            "lifecycle_stage": "customer",
            "customer_type": "paid customer",
        },
        "tags": ["vip"],
    },
    {
        "external_id": "demo-4",
        "email": "katherine@example.com",
        "phone": "+15555550104",
        "time_zone": "America/Los_Angeles",
        "fields": {
            "first_name": "Katherine",
            "lifecycle_stage": "subscriber",
            "customer_type": "free",
        },
    },
    {
        "external_id": "demo-5",
        "email": "linus@example.com",
        "phone": "+15555550105",
        "time_zone": "Europe/Warsaw",
        "fields": {"first_name": "Linus", "lifecycle_stage": "lead", "customer_type": "trial"},
    },
]


def examples_dir() -> Path:
    """The seed journeys ship with the repository, not the installed package."""
    path = Path(__file__).resolve().parents[1] / "examples" / "journeys"
    if not sorted(path.glob("*.json")):
        raise CommandError(
            f"--demo needs the seed journeys, looked for {path}/*.json and found none: "
            "run it from a Nurture checkout installed with `pip install -e .`"
        )
    return path


@dataclass
class DemoSeeded:
    lists: int = 0
    templates: int = 0
    published: list[str] = field(default_factory=list)
    already_published: list[str] = field(default_factory=list)
    contacts: int = 0
    api_key_secret: str | None = None

    def lines(self, api_url: str) -> list[str]:
        journeys = ", ".join(self.published) or "none new"
        if self.already_published:
            journeys += f" (already published: {', '.join(self.already_published)})"
        lines = [
            f"  Demo data      added {self.lists} lists, {self.templates} templates, "
            f"{self.contacts} contacts; journeys published: {journeys}",
        ]
        if self.api_key_secret:
            lines.append(
                f"  API key        {self.api_key_secret}  (named {API_KEY_NAME!r}; shown once, "
                "not stored: copy it now)"
            )
        else:
            lines.append(
                f"  API key        a key named {API_KEY_NAME!r} exists; its secret was shown "
                "when it was made (new one: nurture api-key create --name NAME)"
            )
        example = (self.published or self.already_published or ["KEY"])[0]
        lines.append(
            f"  Try            curl -H 'Authorization: Bearer {self.api_key_secret or '<key>'}' "
            f"{api_url}/v1/journeys/{example}"
        )
        return lines


def load_examples(directory: Path) -> list[dict[str, Any]]:
    definitions = []
    for path in sorted(directory.glob("*.json")):
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        definitions.append(data)
    return definitions


def send_steps(definition: dict[str, Any]) -> list[tuple[str, str]]:
    """(channel, template) of every send step."""
    found = []
    for step in definition.get("steps", {}).values():
        if step.get("type") in ("send_email", "send_sms"):
            channel = "email" if step["type"] == "send_email" else "sms"
            found.append((channel, step["template"]))
    return found


def content_for(channel: str, key: str) -> Content:
    known = TEMPLATES.get((channel, key))
    if known is not None:
        return known
    title = key.replace("-", " ").replace("_", " ").capitalize()
    if channel == "sms":
        return Content(subject=None, text=f"{title}: a message from the demo.")
    return _email(title, f"{title}: an email from the demo. Edit this template to make it yours.")


async def seed_demo(sessions: SessionFactory, directory: Path) -> DemoSeeded:
    definitions = load_examples(directory)
    seeded = DemoSeeded()
    async with sessions.begin() as session:
        seeded.lists = await _add_lists(session)
        await _add_segments(session)
        wanted = {pair for definition in definitions for pair in send_steps(definition)}
        seeded.templates = await _add_templates(session, sorted(wanted))
        for definition in definitions:
            key = definition["key"]
            journey = await session.scalar(select(Journey).where(col(Journey.key) == key))
            if journey is not None and (journey.published_at or journey.status != "draft"):
                seeded.already_published.append(key)
                continue
            try:
                await save_draft(session, definition)
                await publish(session, key)
            except NurtureError as err:
                raise CommandError(
                    f"--demo could not publish the seed journey {key!r}: {err.message} "
                    f"{err.detail or ''}"
                ) from None
            seeded.published.append(key)
        seeded.contacts = await _add_contacts(session)
        has_key = await session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(col(ApiKey.name) == API_KEY_NAME, col(ApiKey.revoked_at).is_(None))
        )
    if not has_key:
        seeded.api_key_secret = (await create_api_key(sessions, API_KEY_NAME)).secret
    return seeded


async def _add_segments(session: AsyncSession) -> None:
    for key, (name, filter) in SEGMENTS.items():
        await session.execute(
            insert(Segment)
            .values(id=uuid.uuid4(), key=key, name=name, filter=filter)
            .on_conflict_do_nothing(index_elements=["key"])
        )


async def _add_lists(session: AsyncSession) -> int:
    added = 0
    for key, name in LISTS.items():
        result = await session.execute(
            insert(ContactList)
            .values(key=key, name=name)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(col(ContactList.id))
        )
        added += len(result.all())
    return added


async def _add_templates(session: AsyncSession, wanted: list[tuple[str, str]]) -> int:
    added = 0
    for channel, key in wanted:
        content = content_for(channel, key)
        result = await session.execute(
            insert(Template)
            .values(
                channel=channel,
                key=key,
                subject=content.subject,
                html=content.html,
                text=content.text,
            )
            .on_conflict_do_nothing(index_elements=["key", "channel"])
            .returning(col(Template.id))
        )
        added += len(result.all())
    return added


async def _add_contacts(session: AsyncSession) -> int:
    added = 0
    for values in CONTACTS:
        result = await session.execute(
            insert(Contact)
            .values(**values, consent={"email": "granted", "sms": "granted"})
            .on_conflict_do_nothing(index_elements=["external_id"])
            .returning(col(Contact.id))
        )
        added += len(result.all())
    return added
