"""Templates: versions, checks at save and publish time, sandboxed rendering, preview and
test sends; through the HTTP API on real Postgres."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlmodel import col, select
from temporalio.client import Client

from nurture.channels.base import DeliveryReceipt, OutgoingMessage, PermanentSendError
from nurture.content.checks import template_problems
from nurture.content.loading import TemplateNotFound, load_template
from nurture.content.rendering import (
    TemplateContent,
    TemplateRenderError,
    contact_context,
    render,
)
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, Message, OutboxMessage, Suppression, Template
from nurture.settings import Settings
from tests.support import make_contact, ok, problems

WELCOME = {
    "subject": "Welcome, {{ fields.first_name | default('friend') }}",
    "html": "<p>Hello {{ fields.first_name | default('there') }}</p>\n"
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
    "text": "Hello {{ fields.first_name | default('there') }}\nUnsubscribe: {{ unsubscribe_url }}",
}


# --- versions --------------------------------------------------------------------------------


async def test_versions_bump_only_when_the_content_changes(api: httpx.AsyncClient) -> None:
    first = ok(await api.put("/v1/templates/email/welcome", json=WELCOME))
    same = ok(await api.put("/v1/templates/email/welcome", json=WELCOME))
    changed = ok(
        await api.put("/v1/templates/email/welcome", json={**WELCOME, "subject": "Hi there"})
    )
    versions = ok(await api.get("/v1/templates/email/welcome/versions"))
    one = ok(await api.get("/v1/templates/email/welcome/versions/1"))
    two = ok(await api.get("/v1/templates/email/welcome/versions/2"))
    missing = await api.get("/v1/templates/email/welcome/versions/3")
    listed = ok(await api.get("/v1/templates"))

    assert (first["version"], same["version"], changed["version"]) == (1, 1, 2)
    assert same["updated_at"] == first["updated_at"]  # an identical PUT changed nothing
    assert [(v["version"], v["subject"]) for v in versions["items"]] == [
        (1, WELCOME["subject"]),
        (2, "Hi there"),
    ]
    assert (one["subject"], one["html"], one["text"]) == (
        WELCOME["subject"],
        WELCOME["html"],
        WELCOME["text"],
    )
    assert two["subject"] == "Hi there" and two["html"] == WELCOME["html"]
    assert missing.status_code == 404
    assert ok(await api.get("/v1/templates/email/welcome"))["version"] == 2
    assert listed["items"][0]["version"] == 2
    assert (await api.get("/v1/templates/email/nope/versions")).status_code == 404


async def test_a_template_written_directly_still_has_its_version(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    async with sessions.begin() as session:
        session.add(Template(channel="email", key="seeded", subject="Old", text="Old body"))

    before = ok(await api.get("/v1/templates/email/seeded/versions"))
    ok(await api.put("/v1/templates/email/seeded", json={"subject": "New", "text": "New body"}))
    after = ok(await api.get("/v1/templates/email/seeded/versions"))

    assert [v["version"] for v in before["items"]] == [1]
    # Its original content was kept as version 1 before being replaced.
    assert [(v["version"], v["subject"]) for v in after["items"]] == [(1, "Old"), (2, "New")]
    assert ok(await api.get("/v1/templates/email/seeded/versions/1"))["text"] == "Old body"


async def test_load_template_reads_the_current_or_a_given_version(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/templates/sms/care", json={"text": "v1"}))
    ok(await api.put("/v1/templates/sms/care", json={"text": "v2 {{ fields.code }}"}))

    async with sessions() as session:
        current = await load_template(session, "sms", "care")
        first = await load_template(session, "sms", "care", version=1)
        with pytest.raises(TemplateNotFound, match="no sms template 'nope'"):
            await load_template(session, "sms", "nope")
        with pytest.raises(TemplateNotFound, match="no version 7"):
            await load_template(session, "sms", "care", version=7)

    assert (current.version, current.text, current.channel) == (2, "v2 {{ fields.code }}", "sms")
    assert (first.version, first.text) == (1, "v1")
    assert render(current, {"fields": {"code": "X1"}}).text == "v2 X1"


# --- checks when saving -------------------------------------------------------------------------


async def test_a_syntax_error_is_refused_with_its_part_and_line(api: httpx.AsyncClient) -> None:
    body = {"subject": "Hi", "html": "<p>Hello</p>\n<p>\n{{ fields.first_name }\n</p>"}

    response = await api.put("/v1/templates/email/broken", json=body)

    assert problems(response) == {"body.html": "line 3: unexpected '}'"}
    assert (await api.get("/v1/templates/email/broken")).status_code == 404


async def test_an_unknown_variable_is_refused_with_a_hint(api: httpx.AsyncClient) -> None:
    body = {
        "subject": "Hi {{ fields.first_name }}",
        "html": "<p>\nHi {{ frist_name }}</p>",
        "text": "Hi {{ contact.first_name }}",
    }
    sms = await api.put("/v1/templates/sms/s", json={"text": "{{ email }}", "subject": "x"})

    response = await api.put("/v1/templates/email/typo", json=body)

    assert problems(response) == {
        "body.html": 'line 2: unknown variable "frist_name" '
        "(use fields.frist_name for a contact field)",
        "body.text": 'line 1: contact has no "first_name" '
        "(use fields.first_name for a contact field)",
    }
    assert problems(sms) == {
        "body.subject": "an SMS has no subject",
        "body.text": 'line 1: unknown variable "email" (use contact.email for a contact attribute)',
    }


def test_template_problems_cover_shape_filters_and_private_attributes() -> None:
    assert template_problems("sms", None, "<p>x</p>", None) == [
        {"path": "text", "message": "an SMS needs text"},
        {"path": "html", "message": "an SMS has no html"},
    ]
    assert template_problems("email", "s", None, "{{ fields.x | nosuch }}") == [
        {"path": "text", "message": "line 1: No filter named 'nosuch'."}
    ]
    assert template_problems("email", "s", "{{ ''.__class__.__mro__ }}", None) == [
        {"path": "html", "message": 'line 1: "__class__" is not allowed (a private attribute)'},
        {"path": "html", "message": 'line 1: "__mro__" is not allowed (a private attribute)'},
    ]
    every_name = (
        "{{ contact.email }} {{ contact.tags | join(', ') }} {{ fields.a.b }} {{ journey }} "
        "{{ message_id }} {{ unsubscribe_url }} {% set n = 1 %}{{ n }} {{ range(3) | list }}"
        "{% for tag in contact.tags %}{{ loop.index }} {{ tag }}{% endfor %}"
    )
    assert template_problems("email", "s", every_name, every_name) == []


# --- rendering ----------------------------------------------------------------------------------


def _content(
    subject: str | None = None, html: str | None = None, text: str | None = None
) -> TemplateContent:
    return TemplateContent("welcome", "email", 3, subject=subject, html=html, text=text)


def test_html_is_escaped_and_text_and_subject_are_not() -> None:
    contact = Contact(email="a@example.com", fields={"first_name": "<script>alert(1)</script>"})
    template = _content(
        subject="Hi {{ fields.first_name }}",
        html="<p>Hi {{ fields.first_name }}</p>",
        text="Hi {{ fields.first_name }}",
    )

    rendered = render(template, contact_context(contact))

    assert rendered.html == "<p>Hi &lt;script&gt;alert(1)&lt;/script&gt;</p>"
    assert rendered.text == "Hi <script>alert(1)</script>"
    assert rendered.subject == "Hi <script>alert(1)</script>"
    assert rendered.version == 3


def test_missing_values_render_empty_or_their_default() -> None:
    contact = Contact(email="a@example.com", fields={"plan": None, "items": "3 items"})
    template = _content(
        text="[{{ fields.first_name }}][{{ fields.first_name | default('there') }}]"
        "[{{ fields.plan | default('free') }}][{{ contact.phone }}][{{ fields.a.b.c }}]"
        "[{{ fields.items }}][{{ journey }}]"
    )

    assert render(template, contact_context(contact)).text == "[][there][free][][][3 items][]"


def test_a_line_break_from_a_field_cannot_add_email_headers() -> None:
    contact = Contact(fields={"name": "Ada\r\nBcc: everyone@example.com"})
    rendered = render(_content(subject="Hi {{ fields.name }}"), contact_context(contact))

    assert rendered.subject == "Hi Ada Bcc: everyone@example.com"


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("line 1\n{{ ''.__class__.__mro__ }}", "access to '__class__' of a str is not allowed"),
        ("{{ fields['__class__'] }}", "access to '__class__' of a dict is not allowed"),
        ("{{ contact.tags.append('x') }}", "access to 'append' of a list is not allowed"),
        ("{{ 'x' * 100000000 }}", "a repetition over 100000 items is not allowed"),
        ("{{ 2 ** 100000 }}", "an exponent over 100 is not allowed"),
        ("{% for i in range(10000000) %}{% endfor %}", "Range too big"),
    ],
)
def test_the_sandbox_refuses_with_a_render_error(source: str, problem: str) -> None:
    context = contact_context(Contact(tags=["vip"]))

    with pytest.raises(TemplateRenderError) as raised:
        render(_content(html=source), context)

    assert raised.value.template_key == "welcome"
    assert raised.value.part == "html"
    assert raised.value.line == source.count("\n") + 1
    assert problem in raised.value.problem
    assert str(raised.value).startswith(f'template "welcome" html line {raised.value.line}: ')


def test_render_refuses_names_outside_the_documented_context() -> None:
    with pytest.raises(ValueError, match="not template variables"):
        render(_content(text="x"), {"contact": {}, "secret": "s"})


def test_compilation_is_cached_but_never_stale() -> None:
    template_id = uuid.uuid4()
    first = TemplateContent("k", "sms", 1, text="one", template_id=template_id)
    edited_in_place = TemplateContent("k", "sms", 1, text="two", template_id=template_id)

    assert render(first, {}).text == "one"
    assert render(edited_in_place, {}).text == "two"


# --- preview ------------------------------------------------------------------------------------


async def test_preview_with_a_contact(api: httpx.AsyncClient, sessions: SessionFactory) -> None:
    ok(await api.put("/v1/templates/email/welcome", json=WELCOME))
    contact_id = await make_contact(
        sessions, external_id="crm-1", fields={"first_name": "<b>Ada</b>"}
    )

    by_id = ok(
        await api.post("/v1/templates/email/welcome/preview", json={"contact_id": str(contact_id)})
    )
    by_external_id = ok(
        await api.post("/v1/templates/email/welcome/preview", json={"external_id": "crm-1"})
    )
    unknown = await api.post(
        "/v1/templates/email/welcome/preview", json={"contact_id": str(uuid.uuid4())}
    )
    no_template = await api.post("/v1/templates/email/nope/preview", json={})
    both = await api.post(
        "/v1/templates/email/welcome/preview",
        json={"external_id": "crm-1", "fields": {"first_name": "Bob"}},
    )

    assert by_id == by_external_id
    assert by_id["subject"] == "Welcome, <b>Ada</b>"
    assert by_id["html"].startswith("<p>Hello &lt;b&gt;Ada&lt;/b&gt;</p>")
    assert 'href="http://localhost:8000/v1/u/preview"' in by_id["html"]
    assert by_id["text"].startswith("Hello <b>Ada</b>\n")
    assert by_id["version"] == 1
    assert unknown.status_code == 404
    assert no_template.status_code == 404
    assert problems(both) == {
        "body": "give a contact (contact_id or external_id) or sample data, not both"
    }


async def test_preview_with_sample_data(api: httpx.AsyncClient) -> None:
    ok(await api.put("/v1/templates/email/welcome", json=WELCOME))
    ok(
        await api.put(
            "/v1/templates/sms/code",
            json={"text": "{{ contact.email }}: {{ fields.code }}/{{ journey | default('-') }}"},
        )
    )

    sample = ok(
        await api.post(
            "/v1/templates/email/welcome/preview", json={"fields": {"first_name": "Grace"}}
        )
    )
    empty = ok(await api.post("/v1/templates/email/welcome/preview", json={}))
    sms = ok(
        await api.post(
            "/v1/templates/sms/code/preview",
            json={"email": "g@example.com", "fields": {"code": 42}, "journey": "onboarding"},
        )
    )

    assert sample["subject"] == "Welcome, Grace"
    assert empty["subject"] == "Welcome, friend"  # the missing field takes its default
    assert empty["text"].startswith("Hello there\n")
    assert sms == {
        "subject": None,
        "html": None,
        "text": "g@example.com: 42/onboarding",
        "version": 1,
    }


async def test_preview_of_a_template_that_fails_to_render_is_a_422_naming_it(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    # Saved directly: the API would refuse `__class__` when saving.
    async with sessions.begin() as session:
        session.add(
            Template(channel="email", key="escape", subject="s", html="ok\n{{ ''.__class__ }}")
        )

    response = await api.post("/v1/templates/email/escape/preview", json={})

    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid",
        "detail": "template \"escape\" html line 2: access to '__class__' of a str is not allowed",
    }


# --- test send ----------------------------------------------------------------------------------


async def test_a_test_send_lands_in_the_outbox_and_records_no_message(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/templates/email/welcome", json=WELCOME))
    contact_id = await make_contact(sessions, external_id="crm-1", fields={"first_name": "Ada"})

    receipt = ok(
        await api.post(
            "/v1/templates/email/welcome/test-send",
            json={"to": "tester@example.com", "external_id": "crm-1"},
        ),
        202,
    )
    again = ok(
        await api.post("/v1/templates/email/welcome/test-send", json={"to": "tester@example.com"}),
        202,
    )

    async with sessions() as session:
        sent = list(
            await session.scalars(select(OutboxMessage).order_by(col(OutboxMessage.created_at)))
        )
        messages = list(await session.scalars(select(Message)))
        suppressions = list(await session.scalars(select(Suppression)))
    assert receipt["provider"] == "outbox"
    assert receipt["provider_message_id"] == str(sent[0].id)
    assert again["provider_message_id"] != receipt["provider_message_id"]  # never deduped
    assert [(m.to_address, m.channel, m.template) for m in sent] == [
        ("tester@example.com", "email", "welcome"),
        ("tester@example.com", "email", "welcome"),
    ]
    assert sent[0].idempotency_key.startswith("test-send:")
    assert sent[0].payload["subject"] == "[Test] Welcome, Ada"
    assert sent[0].payload["html"].startswith("<p>Hello Ada</p>")
    assert sent[0].payload["text"].startswith("Hello Ada\n")
    assert sent[0].payload["variables"]["contact"]["id"] == str(contact_id)
    assert sent[1].payload["subject"] == "[Test] Welcome, friend"
    assert (messages, suppressions) == ([], [])


async def test_a_test_sms_checks_the_number(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/templates/sms/care", json={"text": "Hi {{ fields.first_name }}"}))

    bad = await api.post("/v1/templates/sms/care/test-send", json={"to": "not a phone"})
    bad_email = await api.post(
        "/v1/templates/email/care/test-send", json={"to": "nobody-at-example.com"}
    )
    sent = ok(
        await api.post(
            "/v1/templates/sms/care/test-send",
            json={"to": "+15555550100", "fields": {"first_name": "Ada"}},
        ),
        202,
    )

    assert problems(bad) == {"body.to": "not a phone number in E.164 form (+15555550100)"}
    assert problems(bad_email) == {"body.to": "not an email"}
    async with sessions() as session:
        row = await session.get(OutboxMessage, uuid.UUID(sent["provider_message_id"]))
    assert row is not None
    assert (row.to_address, row.payload["subject"], row.payload["text"]) == (
        "+15555550100",
        None,
        "Hi Ada",
    )


class Refusing:
    """A channel whose provider refuses everything, remembering what it was given."""

    provider = "refusing"

    def __init__(self) -> None:
        self.given: list[OutgoingMessage] = []

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        self.given.append(message)
        raise PermanentSendError("550 mailbox unavailable")


@pytest.fixture
async def refusing_api(
    sessions: SessionFactory, client: Client, settings: Settings
) -> AsyncIterator[tuple[httpx.AsyncClient, Refusing]]:
    from api.app import create_app
    from api.resources import Resources
    from nurture.apikeys import create_api_key

    channel = Refusing()
    resources = Resources(
        settings=settings, sessions=sessions, temporal=client, channels={"email": channel}
    )
    key = await create_api_key(sessions, "tests")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(resources)),
        base_url="http://nurture.test",
        headers={"Authorization": f"Bearer {key.secret}"},
    ) as http:
        yield http, channel


async def test_a_configured_channel_is_used_and_a_refusal_is_a_422(
    refusing_api: tuple[httpx.AsyncClient, Refusing],
) -> None:
    api, channel = refusing_api
    ok(await api.put("/v1/templates/email/welcome", json=WELCOME))
    ok(await api.put("/v1/templates/sms/care", json={"text": "Hi"}))

    refused = await api.post("/v1/templates/email/welcome/test-send", json={"to": "a@example.com"})
    no_sms = await api.post("/v1/templates/sms/care/test-send", json={"to": "+15555550100"})

    assert refused.status_code == 422
    assert refused.json() == {
        "error": "invalid",
        "detail": "the provider refused the message: 550 mailbox unavailable",
    }
    assert [m.subject for m in channel.given] == ["[Test] Welcome, friend"]
    assert no_sms.status_code == 503
    assert no_sms.json()["detail"] == "no sms channel is configured"


# --- publishing ---------------------------------------------------------------------------------


def _journey(template: str) -> dict[str, Any]:
    return {
        "key": "greet",
        "name": "Greet",
        "trigger": {"type": "api"},
        "start": "hello",
        "steps": {
            "hello": {"type": "send_email", "template": template, "next": "bye"},
            "bye": {"type": "send_email", "template": "bye"},
        },
    }


async def test_publishing_refuses_a_template_with_problems(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    ok(await api.put("/v1/templates/email/bye", json={"subject": "Bye", "text": "Bye"}))
    # Written directly, as before these checks existed: the PUT would refuse it.
    async with sessions.begin() as session:
        session.add(
            Template(channel="email", key="typo", subject="Hi", html="<p>\n{{ frist_name }}</p>")
        )
    ok(await api.post("/v1/journeys", json=_journey("typo")), 201)

    refused = await api.post("/v1/journeys/greet/publish")
    ok(await api.put("/v1/templates/email/typo", json={"subject": "Hi", "html": "<p>Hi</p>"}))
    published = ok(await api.post("/v1/journeys/greet/publish"), 201)

    assert problems(refused) == {
        "steps.hello.template": "email template 'typo': html: line 2: unknown variable "
        '"frist_name" (use fields.frist_name for a contact field)'
    }
    assert refused.json()["message"] == "content is not ready: fix the templates listed first"
    assert published["version"] == 1


async def test_publishing_lists_missing_and_broken_templates_together(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    async with sessions.begin() as session:
        session.add(Template(channel="email", key="typo", subject="Hi", text="{{ nope }}"))
    ok(await api.post("/v1/journeys", json=_journey("typo")), 201)

    refused = await api.post("/v1/journeys/greet/publish")

    assert problems(refused) == {
        "steps.hello.template": "email template 'typo': text: line 1: unknown variable "
        '"nope" (use fields.nope for a contact field)',
        "steps.bye.template": "no email template 'bye'",
    }
