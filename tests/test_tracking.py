"""Tracked links, the open pixel and unsubscribe: signed URLs, served by the real app on real
Postgres; a click while Temporal is unreachable is kept and delivered later."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlmodel import col
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.resources import Resources
from nurture.audience.events import redeliver_engagement
from nurture.db.engine import SessionFactory
from nurture.db.models import Event, Message, Suppression
from nurture.settings import Settings
from nurture.tracking import InvalidToken, Tracker, is_machine_open
from tests.support import enroll_awaiting_click, finish, make_contact

BASE = "http://nurture.test"
SECRET = "test-secret"


@pytest.fixture
def tracker() -> Tracker:
    return Tracker(BASE, SECRET)


@pytest.fixture
def tracking_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"public_base_url": BASE, "secret_key": SecretStr(SECRET)})


@pytest.fixture
async def public(
    sessions: SessionFactory, client: Client, tracking_settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    """The app as a recipient reaches it: no API key."""
    app = create_app(Resources(tracking_settings, sessions, client))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE, follow_redirects=False
    ) as http:
        yield http


async def _message(sessions: SessionFactory, channel: str = "email") -> Message:
    contact_id = await make_contact(sessions)
    async with sessions.begin() as session:
        message = Message(
            idempotency_key=f"manual:{uuid.uuid4()}:1",
            contact_id=contact_id,
            step_id="welcome",
            channel=channel,
            template="welcome",
            status="sent",
        )
        session.add(message)
    return message


def _path(url: str) -> str:
    assert url.startswith(BASE), url
    return url[len(BASE) :]


# --- tokens and HTML -------------------------------------------------------------------------


def test_tokens_round_trip_and_refuse_tampering(tracker: Tracker) -> None:
    message_id = uuid.uuid4()
    url = tracker.click_url(message_id, "purchase", "https://shop.test/buy?x=1")
    token = url.rsplit("/", 1)[1]

    target = tracker.read_click(token)
    assert (target.message_id, target.link, target.url) == (
        message_id,
        "purchase",
        "https://shop.test/buy?x=1",
    )
    assert "@" not in url and str(message_id) not in url  # nothing readable about anyone
    payload, signature = token.rsplit(".", 1)
    with pytest.raises(InvalidToken):
        tracker.read_click(payload[:-2] + "xx." + signature)
    with pytest.raises(InvalidToken):  # made with another secret
        Tracker(BASE, "other-secret").read_click(token)
    open_token = tracker.open_url(message_id).rsplit("/", 1)[1].removesuffix(".gif")
    with pytest.raises(InvalidToken):  # a token for one purpose is refused for another
        tracker.read_message_id("unsubscribe", open_token)
    assert tracker.read_message_id("open", open_token) == message_id


def test_links_are_rewritten_except_the_ones_that_must_stay(tracker: Tracker) -> None:
    message_id = uuid.uuid4()
    unsubscribe = tracker.unsubscribe_url(message_id)
    html = (
        "<html><body>"
        '<a href="https://shop.test/buy?a=1&amp;b=2" data-link="purchase">Buy</a>'
        "<a href='https://blog.test/post'>Blog</a>"
        '<a href="mailto:help@shop.test">Mail us</a>'
        '<a href="#top">Top</a>'
        '<a href="https://private.test/" data-track="off">Private</a>'
        f'<a href="{unsubscribe}">Unsubscribe</a>'
        "</body></html>"
    )

    tracked = tracker.track_html(html, message_id)

    links = re.findall(r'href="([^"]+)"', tracked)
    buy, blog = (tracker.read_click(link.rsplit("/", 1)[1]) for link in links[:2])
    assert (buy.link, buy.url) == ("purchase", "https://shop.test/buy?a=1&b=2")
    assert (blog.link, blog.url) == ("https://blog.test/post", "https://blog.test/post")
    assert links[2:] == ["mailto:help@shop.test", "#top", "https://private.test/", unsubscribe]
    pixel = re.search(r'<img src="([^"]+)"[^>]*></body>', tracked)
    assert pixel is not None and "/v1/t/o/" in pixel.group(1)
    assert tracker.track_html("<p>no body tag</p>", message_id, opens=False) == (
        "<p>no body tag</p>"
    )


@pytest.mark.parametrize(
    ("agent", "ip", "machine"),
    [
        ("Mozilla/5.0", "203.0.113.9", True),  # Apple Mail Privacy Protection's bare agent
        ("Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15", "17.58.0.1", True),  # Apple's network
        ("Mozilla/5.0 (compatible; Barracuda Sentinel)", "198.51.100.4", True),
        (None, "198.51.100.4", True),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Thunderbird/128.0", "198.51.100.4", False),
    ],
)
def test_machine_opens(agent: str | None, ip: str, machine: bool) -> None:
    assert is_machine_open(agent, ip) is machine


# --- through the app ------------------------------------------------------------------------


async def test_a_click_redirects_and_is_recorded_with_its_link_name(
    public: httpx.AsyncClient, sessions: SessionFactory, tracker: Tracker
) -> None:
    message = await _message(sessions)
    url = tracker.click_url(message.id, "purchase", "https://shop.test/buy")

    response = await public.get(_path(url), headers={"User-Agent": "Mozilla/5.0 (X11) Firefox"})

    assert response.status_code == 302
    assert response.headers["location"] == "https://shop.test/buy"
    async with sessions() as session:
        event = (await session.scalars(select(Event))).one()
    assert (event.kind, event.link, event.message_id, event.machine) == (
        "click",
        "purchase",
        message.id,
        False,
    )
    assert event.signalled_at is not None  # nothing to signal (no enrollment): delivered


async def test_a_forged_link_is_not_followed(
    public: httpx.AsyncClient, sessions: SessionFactory, tracker: Tracker
) -> None:
    message = await _message(sessions)
    forged = Tracker(BASE, "guessed-secret").click_url(message.id, "x", "https://evil.test/")

    response = await public.get(_path(forged))

    assert response.status_code == 404
    assert "location" not in response.headers
    async with sessions() as session:
        assert (await session.scalars(select(Event))).all() == []


async def test_the_pixel_answers_a_gif_and_tells_people_from_proxies(
    public: httpx.AsyncClient, sessions: SessionFactory, tracker: Tracker
) -> None:
    message = await _message(sessions)
    path = _path(tracker.open_url(message.id))

    person = await public.get(path, headers={"User-Agent": "Mozilla/5.0 (X11) Thunderbird/128"})
    proxy = await public.get(path, headers={"User-Agent": "Mozilla/5.0"})
    broken = await public.get("/v1/t/o/not-a-token.gif")

    for response in (person, proxy, broken):
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/gif"
        assert response.content.startswith(b"GIF89a")
    async with sessions() as session:
        events = (await session.scalars(select(Event).order_by(col(Event.received_at)))).all()
    assert [(e.kind, e.machine) for e in events] == [("open", False), ("open", True)]
    assert events[1].signalled_at is None  # a machine open is kept, never signalled


async def test_unsubscribe_asks_on_get_and_suppresses_on_post(
    public: httpx.AsyncClient, sessions: SessionFactory, tracker: Tracker
) -> None:
    message = await _message(sessions)
    path = _path(tracker.unsubscribe_url(message.id))

    page = await public.get(path)
    async with sessions() as session:
        before = (await session.scalars(select(Suppression))).all()
    one_click = await public.post(
        path,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    again = await public.post(path)

    assert page.status_code == 200 and 'method="post"' in page.text
    assert before == []  # a link scanner's GET changes nothing
    assert one_click.status_code == 200 and again.status_code == 200
    async with sessions() as session:
        suppression = (await session.scalars(select(Suppression))).one()
    assert (suppression.contact_id, suppression.channel, suppression.reason) == (
        message.contact_id,
        "email",
        "unsubscribed",
    )
    assert suppression.source == "one_click"
    assert (await public.post("/v1/u/forged.token")).status_code == 404


@pytest.mark.usefixtures("worker")
async def test_a_click_while_temporal_is_down_still_redirects_and_is_delivered_later(
    sessions: SessionFactory,
    client: Client,
    env: WorkflowEnvironment,
    tracking_settings: Settings,
    tracker: Tracker,
    api: httpx.AsyncClient,
) -> None:
    waiting = await enroll_awaiting_click(api, sessions, client)
    handle, message_id = waiting.handle, waiting.message_id
    # An API whose Temporal is unreachable (nothing listens on port 1).
    unreachable = await Client.connect(
        "127.0.0.1:1", lazy=True, data_converter=pydantic_data_converter
    )
    app = create_app(Resources(tracking_settings, sessions, unreachable))
    url = tracker.click_url(message_id, "purchase", "https://shop.test/buy")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        response = await http.get(_path(url))

    assert response.status_code == 302
    assert response.headers["location"] == "https://shop.test/buy"
    async with sessions() as session:
        kept = (await session.scalars(select(Event))).one()
    assert kept.signalled_at is None

    assert await redeliver_engagement(sessions, client) == 1
    assert await redeliver_engagement(sessions, client) == 0  # delivered once
    result = await finish(env, handle)
    assert [p.step for p in result.path][-2:] == ["mark_paid", "to_customers"]
