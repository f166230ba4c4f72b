"""Template rendering within limits: no value past the sandbox's bounds, no part past its
output limit, no render past its time limit, and never on an event loop (issue 10, item 7).

The slow templates here run for days unbounded; each test that renders one holds a generous
`asyncio.timeout` as a hang guard only (the limit itself is 1 s of CPU)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nurture.content import isolation
from nurture.content.isolation import render_isolated
from nurture.content.rendering import (
    MAX_OUTPUT_BYTES,
    TemplateContent,
    TemplateLimitError,
    TemplateRenderError,
    contact_context,
    message_context,
    render,
)
from nurture.db.engine import SessionFactory
from nurture.db.models import Contact, Message, Template
from tests.support import finish, make_contact, ok, outbox_count, problems, publish_journey, start

# Three nested loops of 100,000: 10**15 iterations, and not one value past any bound.
ENDLESS = (
    "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}"
    "{% endfor %}{% endfor %}{% endfor %}"
)
HANG_GUARD = 10  # seconds: far above the 1 s limit, only so that a regression fails, not hangs


def _content(html: str, key: str = "t") -> TemplateContent:
    return TemplateContent(key, "email", 1, subject="Hi", html=html)


# --- the sandbox's bounds: refused before the value is built ------------------------------------

BIG = "{% set big = 'x' * 100000 %}"
# Eleven references to one string of 100,000: 1.1 million characters once printed.
ELEVEN = BIG + "{% set l = [big, big, big, big, big, big, big, big, big, big, big] %}"


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        # The cases: each rendered 100 MB.
        ("{{ 'x'.center(10**8) }}", "center() would be over 1000000 characters"),
        ("{{ 'x' | center(100000000) }}", "the center filter would be over 1000000 characters"),
        (
            "{{ ('x' * 10000).replace('x', 'y' * 10000) }}",
            "replace() would be over 1000000 characters",
        ),
        (
            "{{ ('x' * 10000) | replace('x', 'y' * 10000) }}",
            "the replace filter would be over 1000000 characters",
        ),
        # Other ways to grow one value in one step.
        ("{{ 'x'.ljust(2000000) }}", "ljust() would be over"),
        ("{{ '7'.zfill(2000000) }}", "zfill() would be over"),
        ("{{ ('\t' * 100000).expandtabs(1000) }}", "expandtabs() would be over"),
        (ELEVEN + "{{ '-'.join(l) }}", "join() would be over"),
        (ELEVEN + "{{ l | join }}", "the join filter would be over"),
        (ELEVEN + "{{ l }}", "a value would be over"),
        (ELEVEN + "{{ l | tojson }}", "a value would be over"),
        (BIG + "{{ [big] * 11 }}", "a repetition would be over"),
        (
            BIG + "{% set l = [big, big, big, big] %}{% set m = [l, l, l, l] %}{{ m | string }}",
            "a value would be over",
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "a ~ join would be over",
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s + ns.s %}{% endfor %}",
            "a concatenation would be over",
        ),
        ("{{ '%100000000d' % 1 }}", "a % width would be over"),
        ("{{ '%*d' % (100000000, 1) }}", "a % width would be over"),
        ("{{ '%100000000d' | format(1) }}", "a % width would be over"),
        ("{{ '{:100000000}'.format(1) }}", "a format width would be over"),
        ("{{ '{:{}}'.format(1, 100000000) }}", "a format width would be over"),
        (BIG + "{{ '{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}'.format(big) }}", "format() would be over"),
        ("{{ 'a\nb' | indent(100000000) }}", "the indent filter would be over"),
        ("{{ ('a ' * 50000) | wordwrap(1, wrapstring='x' * 1000) }}", "the wordwrap filter"),
        ("{{ {'a': 1} | tojson(indent=100000000) }}", "an indent over 100 is not allowed"),
        ("{{ [1] | batch(100000000, 'x') | list }}", "a count over 100000 is not allowed"),
        ("{{ lipsum(100000000) }}", "lipsum over 10000 words is not allowed"),
        ("{{ (10 ** 100) ** 100 }}", "a number over 4096 bits is not allowed"),
        (
            "{% set ns = namespace(n=10) %}{% for i in range(40) %}"
            "{% set ns.n = ns.n * ns.n %}{% endfor %}",
            "a number over 4096 bits is not allowed",
        ),
        # Bounds that were there before, now reported as limits.
        ("{{ 'x' * 100000000 }}", "a repetition over 100000 items is not allowed"),
        ("{{ 2 ** 100000 }}", "an exponent over 100 is not allowed"),
        ("{% for i in range(10000000) %}{% endfor %}", "Range too big"),
        # Output, inside a block and at the top level; nesting.
        (
            "{% set body %}{% for i in range(11) %}{{ 'x' * 100000 }}{% endfor %}{% endset %}",
            "a block would be over 1000000 characters",
        ),
        ("{% for i in range(11) %}{{ 'x' * 100000 }}{% endfor %}", "output over 1000000 bytes"),
        ("{% for i in range(6) %}{{ 'é' * 100000 }}{% endfor %}", "output over 1000000 bytes"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "nests too deeply"),
    ],
)
def test_the_sandbox_refuses_to_build_huge_values(source: str, problem: str) -> None:
    with pytest.raises(TemplateLimitError) as raised:
        render(_content(source), contact_context(Contact(tags=["vip"])))

    assert problem in raised.value.problem
    assert raised.value.part == "html"
    assert raised.value.line in (1, 2, None)  # `indent`'s source has a line break in it


def test_values_within_the_bounds_render_as_before() -> None:
    source = (
        "{{ 'x' | center(9) }}|{{ 'a\nb' | indent(2) }}|{{ '%s and %05.2f' | format('a', 3.14159) }}"
        "|{{ '{:>5}'.format('r') }}|{{ [1, 2, 3] | join(', ') }}|{{ 'a b' | replace('a', 'c') }}"
        "|{{ 2 ** 10 }}|{{ 'ab' ~ 'cd' }}|{{ [1, 2] + [3] }}|{{ 'a' + 'b' }}|{{ 10 % 3 }}"
        "|{{ '%d%%' % 5 }}|{{ {'a': [1, 2]} | tojson }}|{{ 'ab' * 3 }}|{{ range(3) | list }}"
        "|{{ ('x' * 90000) | length }}|{{ fields.items }}|{{ 'x'.rjust(3, '.') }}"
    )
    contact = Contact(fields={"items": "3 items"})

    rendered = render(_content(source), contact_context(contact))

    assert rendered.html == (
        "    x    |a\n  b|a and 03.14|    r|1, 2, 3|c b|1024|abcd|[1, 2, 3]|ab|1|5%"
        '|{"a": [1, 2]}|ababab|[0, 1, 2]|90000|3 items|..x'
    )


def test_output_up_to_the_limit_renders() -> None:
    exactly = "{% for i in range(10) %}{{ 'x' * 100000 }}{% endfor %}"

    assert len(render(_content(exactly), {}).html or "") == MAX_OUTPUT_BYTES


# --- in a render process: time limit, off the event loop -----------------------------------------


async def test_an_endless_template_is_stopped_and_the_event_loop_keeps_running() -> None:
    ticks = 0
    stop = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await render_isolated(_content("warm up"), {})  # a render process started, before counting
    ticks = 0
    async with asyncio.timeout(HANG_GUARD):
        with pytest.raises(TemplateLimitError) as raised:
            await render_isolated(_content("line 1\n" + ENDLESS, key="endless"), {})
    stop.set()
    await ticker

    assert str(raised.value).startswith('template "endless" html line 2: took longer than')
    assert raised.value.problem == "took longer than 1 s to render"
    # Rendered on the event loop, it would have blocked it: not one tick in the meantime.
    assert ticks >= 10


async def test_the_process_is_killed_when_the_time_limit_cannot_interrupt_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if the CPU timer could not interrupt the render (one long C call): the wall clock
    # ends it, killing the process, and the next render gets a fresh one.
    monkeypatch.setattr(isolation, "RENDER_TIMEOUT_SECONDS", 3600.0)
    monkeypatch.setattr(isolation, "RENDER_WALL_SECONDS", 0.5)

    async with asyncio.timeout(HANG_GUARD):
        with pytest.raises(TemplateLimitError) as raised:
            await render_isolated(_content(ENDLESS), {})
    monkeypatch.undo()
    after = await render_isolated(
        _content("still {{ contact.email }}"), {"contact": {"email": "a@b"}}
    )

    assert raised.value.problem == "took longer than 0.5 s to render"
    assert raised.value.line is None  # killed from outside: the line is not known
    assert after.html == "still a@b"


async def test_a_render_process_ended_from_outside_is_replaced() -> None:
    await asyncio.gather(*(render_isolated(_content(f"{i}"), {}) for i in range(4)))
    for child in list(isolation._pool()._processes):
        child.process.kill()
        child.process.wait()

    again = await asyncio.gather(*(render_isolated(_content(f"{i}"), {}) for i in range(4)))

    assert [r.html for r in again] == ["0", "1", "2", "3"]


async def test_a_template_growing_a_buffer_is_stopped_by_memory_or_time() -> None:
    # Each piece is small and the block is measured only when it ends: the process's memory
    # limit (or, where there is none, the time limit) stops it first.
    source = "{% set x %}{% for a in range(100000) %}{{ 'x' * 100000 }}{% endfor %}{% endset %}"

    async with asyncio.timeout(HANG_GUARD):
        with pytest.raises(TemplateLimitError) as raised:
            await render_isolated(_content(source), {})
    after = await render_isolated(_content("fine"), {})

    assert raised.value.problem in ("used too much memory", "took longer than 1 s to render")
    assert after.html == "fine"


async def test_rendering_in_a_process_gives_what_rendering_here_gives() -> None:
    contact = Contact(
        email="a@example.com",
        tags=["vip"],
        fields={"first_name": "<b>Ada</b>\r\nBcc: x", "plan": None, "n": 3, "emoji": "😀\ud800"},
    )
    template = TemplateContent(
        "welcome",
        "email",
        4,
        subject="Hi {{ fields.first_name }}",
        html="<p>{{ fields.first_name }} {{ fields.plan | default('free') }} {{ contact.tags }}</p>",
        text="{{ fields.n * 2 }} {{ fields.emoji }} {{ unsubscribe_url }} {{ journey }}\n",
    )
    context = message_context(
        contact, message_id="m-1", journey="j", unsubscribe_url="http://u.test/x"
    )

    assert await render_isolated(template, context) == render(template, context)
    with pytest.raises(TemplateRenderError) as raised:
        await render_isolated(_content("ok\n{{ ''.__class__ }}"), {})
    assert str(raised.value) == (
        "template \"t\" html line 2: access to '__class__' of a str is not allowed"
    )
    assert not isinstance(raised.value, TemplateLimitError)
    with pytest.raises(ValueError, match="not template variables"):
        await render_isolated(_content("x"), {"secret": "s"})


async def test_parts_render_concurrently_with_other_work() -> None:
    # A slow render holds one render process; the others keep serving.
    slow = asyncio.create_task(render_isolated(_content(ENDLESS), {}))
    async with asyncio.timeout(HANG_GUARD):
        quick = [await render_isolated(_content(f"n{i}"), {}) for i in range(5)]
        quick_done_first = not slow.done()
        with pytest.raises(TemplateLimitError):
            await slow

    assert [r.html for r in quick] == ["n0", "n1", "n2", "n3", "n4"]
    assert quick_done_first


# --- the API: saving and previewing ------------------------------------------------------------


async def test_saving_a_template_over_a_limit_is_refused(api: httpx.AsyncClient) -> None:
    async with asyncio.timeout(HANG_GUARD):
        slow = await api.put(
            "/v1/templates/email/slow", json={"subject": "Hi", "html": "<p>\n" + ENDLESS}
        )
    huge = await api.put(
        "/v1/templates/email/huge",
        json={"subject": "{{ 'x'.center(10**8) }}", "text": "{{ 'x' * 100000 * 1 }}" * 11},
    )
    # Over a limit only with some contact's data: saved (its sends fail, see below).
    depends = ok(
        await api.put(
            "/v1/templates/sms/depends",
            json={
                "text": "{% for i in range(fields.n | default(0)) %}{{ 'x' * 100000 }}{% endfor %}"
            },
        )
    )
    # A render error that is not a limit is not checked when saving (it may depend on data).
    ok(await api.put("/v1/templates/sms/divides", json={"text": "{{ 1 / fields.n }}"}))

    assert problems(slow) == {
        "body.html": "line 2: took longer than 1 s to render (rendered for a contact without fields)"
    }
    assert problems(huge) == {
        "body.subject": "line 1: center() would be over 1000000 characters, which is not "
        "allowed (rendered for a contact without fields)",
        "body.text": "output over 1000000 bytes (rendered for a contact without fields)",
    }
    assert (await api.get("/v1/templates/email/slow")).status_code == 404
    assert depends["version"] == 1


async def test_a_slow_preview_is_a_422_and_the_api_keeps_answering(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    # Saved directly, as before these checks: the PUT would refuse it.
    async with sessions.begin() as session:
        session.add(Template(channel="email", key="slow", subject="Hi", html=ENDLESS))
    ok(await api.put("/v1/templates/sms/quick", json={"text": "quick"}))
    finished: list[str] = []

    async def preview() -> httpx.Response:
        response = await api.post("/v1/templates/email/slow/preview", json={})
        finished.append("preview")
        return response

    async def meanwhile() -> None:
        await asyncio.sleep(0.05)  # the preview is rendering by now
        for _ in range(3):
            ok(await api.post("/v1/templates/sms/quick/preview", json={}))
            ok(await api.get("/v1/templates"))
        finished.append("others")

    async with asyncio.timeout(HANG_GUARD):
        slow, _ = await asyncio.gather(preview(), meanwhile())

    assert slow.status_code == 422
    assert slow.json() == {
        "error": "invalid",
        "detail": 'template "slow" html line 1: took longer than 1 s to render',
    }
    assert finished == ["others", "preview"]


async def test_a_huge_preview_is_a_422(api: httpx.AsyncClient) -> None:
    ok(
        await api.put(
            "/v1/templates/sms/depends",
            json={
                "text": "{% for i in range(fields.n | default(0)) %}{{ 'x' * 100000 }}{% endfor %}"
            },
        )
    )

    small = ok(await api.post("/v1/templates/sms/depends/preview", json={"fields": {"n": 1}}))
    huge = await api.post("/v1/templates/sms/depends/preview", json={"fields": {"n": 11}})

    assert len(small["text"]) == 100000
    assert huge.status_code == 422
    assert huge.json()["detail"] == 'template "depends" text: output over 1000000 bytes'


# --- the worker: a send over a limit fails for good, and the journey goes on ----------------------


@pytest.fixture
def quick_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    # The send path is what is tested here, not the timer: a shorter limit keeps it quick.
    monkeypatch.setattr(isolation, "RENDER_TIMEOUT_SECONDS", 0.3)


async def test_a_send_over_a_limit_fails_for_good_with_the_reason(
    worker: None,
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    task_queue: str,
    quick_limits: None,
) -> None:
    async with sessions.begin() as session:
        session.add(Template(channel="email", key="endless", subject="Hi", html="<p>\n" + ENDLESS))
        session.add(
            Template(channel="email", key="huge", subject="Hi", text="{{ 'x' * 100000 }}" * 11)
        )
    definition = {
        "key": "heavy",
        "name": "Heavy",
        "trigger": {"type": "api"},
        "start": "first",
        "steps": {
            "first": {"type": "send_email", "template": "endless", "next": "second"},
            "second": {"type": "send_email", "template": "huge", "next": "third"},
            "third": {"type": "send_email", "template": "fine"},
        },
    }
    await publish_journey(sessions, definition)  # creates "fine" ("Hi")
    contact_id = await make_contact(sessions)
    _, handle = await start(sessions, client, task_queue, "heavy", contact_id)

    async with asyncio.timeout(60):
        result = await finish(env, handle)

    assert result.status == "completed"
    assert [(p.step, p.outcome) for p in result.path] == [
        ("first", 'failed: template "endless" html line 2: took longer than 0.3 s to render'),
        ("second", 'failed: template "huge" text: output over 1000000 bytes'),
        ("third", "sent"),
    ]
    async with sessions() as session:
        messages = (await session.scalars(select(Message).order_by(col(Message.created_at)))).all()
    assert [(m.template, m.status) for m in messages] == [
        ("endless", "failed"),
        ("huge", "failed"),
        ("fine", "sent"),
    ]
    assert messages[0].reason == 'template "endless" html line 2: took longer than 0.3 s to render'
    assert await outbox_count(sessions) == 1
