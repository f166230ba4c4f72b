"""What recipients reach from a message: tracked links, the open pixel, unsubscribe.

Authenticated by the HMAC-signed token in the URL (see `nurture.tracking`), not by an API key.
A person following a link always gets where it goes, at once: the click is stored, the
redirect answered, and the enrollment told in the background (Temporal away: redelivered later
by the worker, see `nurture.audience.events.redeliver_engagement`). Postgres away: the click is
kept in the local spool and stored once it is back (`nurture.engagement_spool`). The same for
the open pixel.
"""

from __future__ import annotations

import logging
import uuid
from functools import lru_cache
from html import escape
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.background import BackgroundTask

from api.deps import ResourcesDep
from nurture.audience.events import StoredEngagement, deliver_engagement, store_engagement
from nurture.audience.suppressions import suppress
from nurture.db.engine import database_away
from nurture.db.models import Message, SuppressionReason
from nurture.engagement_spool import engagement_record, engagement_spool, unsubscribe_record
from nurture.errors import NotFound
from nurture.tracking import PIXEL_GIF, InvalidToken, Tracker, is_machine_open

logger = logging.getLogger(__name__)

router = APIRouter(tags=["tracking"])


@lru_cache(maxsize=8)
def _tracker(base_url: str, secret: str) -> Tracker:
    return Tracker(base_url, secret)


async def get_tracker(resources: ResourcesDep) -> Tracker:
    settings = resources.settings
    return _tracker(settings.public_base_url, settings.secret_key.get_secret_value())


TrackerDep = Annotated[Tracker, Depends(get_tracker)]

_NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0"}


@router.get(
    "/t/c/{token}",
    summary="Follow a tracked link",
    description="Records the click, tells the enrollment, and redirects (302) to the link.",
    response_class=RedirectResponse,
    status_code=302,
    responses={404: {"description": "not a link we made (a page)", "content": {"text/html": {}}}},
)
async def click(
    token: str, request: Request, resources: ResourcesDep, tracker: TrackerDep
) -> Response:
    try:
        target = tracker.read_click(token)
    except InvalidToken:
        return HTMLResponse(_page("Link not found", "This link is not valid."), status_code=404)
    machine = is_machine_open(request.headers.get("user-agent"), None)
    background = await _keep(resources, target.message_id, "click", target.link, machine)
    return RedirectResponse(target.url, status_code=302, headers=_NO_STORE, background=background)


@router.get(
    "/t/o/{token}.gif",
    summary="Open pixel",
    description="Records an open (a machine open when a mail proxy or scanner fetched it).",
    response_class=Response,
    responses={200: {"content": {"image/gif": {}}}},
)
async def open_pixel(
    token: str, request: Request, resources: ResourcesDep, tracker: TrackerDep
) -> Response:
    background = None
    try:
        message_id = tracker.read_message_id("open", token)
    except InvalidToken:
        pass  # an image is answered all the same: a broken image helps nobody
    else:
        client_ip = request.client.host if request.client else None
        machine = is_machine_open(request.headers.get("user-agent"), client_ip)
        background = await _keep(resources, message_id, "open", None, machine)
    return Response(PIXEL_GIF, media_type="image/gif", headers=_NO_STORE, background=background)


async def _keep(
    resources: ResourcesDep,
    message_id: uuid.UUID,
    kind: Literal["open", "click"],
    link: str | None,
    machine: bool,
) -> BackgroundTask | None:
    """Store the open or click (Postgres away: spool it); the task that tells the enrollment
    after the response has gone, if any. Never raises: the person is answered regardless."""
    spool = engagement_spool(resources.settings.data_dir)
    try:
        stored = await store_engagement(resources.sessions, message_id, kind, link, machine=machine)
    except NotFound:
        return None  # the message is gone (contact erased): the link still works
    except Exception as err:
        if not database_away(err):
            logger.exception("%s on message %s not recorded", kind, message_id)
            return None
        try:
            spool.keep(engagement_record(message_id, kind, link, machine))
        except OSError:
            logger.exception("%s on message %s lost: the spool cannot be written", kind, message_id)
            return None
        logger.warning("database away: %s on message %s spooled", kind, message_id)
        spool.kick(resources.sessions, resources.temporal, resources.enrollment_options)
        return None
    spool.kick(resources.sessions, resources.temporal, resources.enrollment_options)
    return BackgroundTask(_deliver, resources, stored)


async def _deliver(resources: ResourcesDep, stored: StoredEngagement) -> None:
    try:
        await deliver_engagement(
            resources.sessions, resources.temporal, stored, resources.enrollment_options
        )
    except Exception:  # stored: the worker's redelivery tells the enrollment later
        logger.exception("%s %s not delivered now", stored.event.kind, stored.event.id)


@router.get(
    "/u/{token}",
    summary="Unsubscribe page",
    description="Asks to confirm; nothing changes on GET, since link scanners fetch links.",
    response_class=HTMLResponse,
    responses={404: {"description": "not a link we made (a page)", "content": {"text/html": {}}}},
)
async def unsubscribe_page(token: str, resources: ResourcesDep, tracker: TrackerDep) -> Response:
    message = await _message(token, resources, tracker)
    if message is None:
        return HTMLResponse(_page("Link not found", "This link is not valid."), status_code=404)
    form = (
        f'<form method="post" action="{escape(tracker.unsubscribe_url(message.id))}">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return HTMLResponse(
        _page("Unsubscribe", f"Stop receiving these {_what(message.channel)}?" + form),
        headers=_NO_STORE,
    )


@router.post(
    "/u/{token}",
    summary="Unsubscribe (also RFC 8058 one-click)",
    description="Suppresses the contact on the message's channel; later sends are skipped. "
    "Mail clients POST `List-Unsubscribe=One-Click` here from the List-Unsubscribe header.",
    response_class=HTMLResponse,
    responses={404: {"description": "not a link we made (a page)", "content": {"text/html": {}}}},
)
async def unsubscribe(
    token: str, request: Request, resources: ResourcesDep, tracker: TrackerDep
) -> Response:
    one_click = "List-Unsubscribe=One-Click" in (await request.body()).decode(errors="replace")
    try:
        message = await _message(token, resources, tracker)
        if message is None:
            return HTMLResponse(_page("Link not found", "This link is not valid."), status_code=404)
        if message.contact_id is not None:
            async with resources.sessions.begin() as session:
                await suppress(
                    session,
                    message.contact_id,
                    message.channel,
                    SuppressionReason.UNSUBSCRIBED,
                    source="one_click" if one_click else "unsubscribe_link",
                    message_id=message.id,
                )
    except Exception as err:
        if not database_away(err):
            raise
        # Nobody asks twice (a mail client's one-click POST least of all): kept in the spool
        # and applied once Postgres is back. The token was checked by _message.
        spool = engagement_spool(resources.settings.data_dir)
        message_id = tracker.read_message_id("unsubscribe", token)
        spool.keep(unsubscribe_record(message_id, one_click))
        spool.kick(resources.sessions, resources.temporal, resources.enrollment_options)
        logger.warning("database away: unsubscribe from message %s spooled", message_id)
        return HTMLResponse(
            _page("Unsubscribed", "You will not receive these messages any more."),
            headers=_NO_STORE,
        )
    return HTMLResponse(
        _page("Unsubscribed", f"You will not receive these {_what(message.channel)} any more."),
        headers=_NO_STORE,
    )


async def _message(token: str, resources: ResourcesDep, tracker: Tracker) -> Message | None:
    try:
        message_id = tracker.read_message_id("unsubscribe", token)
    except InvalidToken:
        return None
    async with resources.sessions() as session:
        return await session.get(Message, message_id)


def _what(channel: str) -> str:
    return "text messages" if channel == "sms" else "emails"


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title></head>"
        '<body style="font-family:sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem">'
        f"<h1>{escape(title)}</h1><p>{body}</p></body></html>"
    )
