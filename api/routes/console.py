"""The web console (`/console`), the offline API docs (`/docs`, `/redoc`) and the package's
static files (`/static`). Pages are rendered on the server from the same functions the JSON API
uses; see `nurture.console` for how signing in works.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from html import escape
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select
from sqlmodel import col

from api.deps import ResourcesDep, SessionDep
from api.resources import Resources
from api.routes.contacts import contact_out
from api.schemas.common import PG_INT_MAX
from nurture.analytics.daily import SERIES, daily_series
from nurture.analytics.journey import graph_order, journey_analytics, journey_definition
from nurture.analytics.review import weekly_review
from nurture.apikeys import authenticate
from nurture.audience.timeline import contact_timeline
from nurture.console import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    STATIC_DIR,
    read_session,
    session_token,
    templates,
)
from nurture.console.charts import bars_svg, funnel_svg
from nurture.console.graph import describe, flowchart_svg
from nurture.db.models import (
    ApiKey,
    Contact,
    Enrollment,
    EnrollmentStatus,
    Journey,
    JourneyVersion,
    OutboxMessage,
    utcnow,
)
from nurture.errors import NotFound
from nurture.journeys.conversion import goal_conversion

MAX_LISTED = 200


class LoginRequired(Exception):
    """No valid console session: the handler sends the browser to the login page."""


async def console_key(request: Request, resources: ResourcesDep) -> ApiKey:
    key_id = read_session(
        resources.settings.secret_key.get_secret_value(), request.cookies.get(SESSION_COOKIE)
    )
    if key_id is None:
        raise LoginRequired
    async with resources.sessions() as session:
        key = await session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        raise LoginRequired
    return key


ConsoleKey = Annotated[ApiKey, Depends(console_key)]
router = APIRouter(prefix="/console", include_in_schema=False)


def _page(request: Request, name: str, **context: Any) -> HTMLResponse:
    resources: Resources = request.app.state.resources
    context.setdefault("mailbox", resources.settings.email_channel == "outbox")
    return templates.TemplateResponse(
        request,
        name,
        context,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
            "style-src 'self' 'unsafe-inline'; "
            "frame-src 'self'; frame-ancestors 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


# --- signing in ---------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request) -> HTMLResponse:
    return _page(request, "login.html", error=None, mailbox=False)


def _same_origin(request: Request) -> bool:
    """A form posted from our own pages: browsers send Origin with every POST, and a page
    elsewhere cannot make it ours (login CSRF would sign a victim in with someone's key)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None  # no header: not a browser form; "null": a sandboxed frame
    return urlsplit(origin).netloc == request.headers.get("host")


@router.post("/login")
async def login(request: Request, resources: ResourcesDep) -> Response:
    if not _same_origin(request):
        return Response("cross-origin form refused", status_code=403)
    # A plain urlencoded form, read without a multipart parser dependency.
    form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
    secret = (form.get("api_key") or [""])[0].strip()
    key = await authenticate(resources.sessions, secret) if secret else None
    if key is None:
        refused = _page(request, "login.html", error="That key is not valid.", mailbox=False)
        refused.status_code = 401
        return refused
    response = RedirectResponse("/console/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_token(resources.settings.secret_key.get_secret_value(), key.id),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https"
        or resources.settings.public_base_url.startswith("https:"),
        path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    if not _same_origin(request):
        return Response("cross-origin form refused", status_code=403)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- journeys -----------------------------------------------------------------------------


@router.get("/")
async def journeys_page(request: Request, key: ConsoleKey, session: SessionDep) -> HTMLResponse:
    journeys = list(await session.scalars(select(Journey).order_by(col(Journey.key))))
    live = dict(
        (
            await session.execute(
                select(
                    col(JourneyVersion.journey_id), func.max(col(JourneyVersion.version))
                ).group_by(col(JourneyVersion.journey_id))
            )
        ).all()
    )
    counts: dict[uuid.UUID, dict[str, int]] = {}
    for journey_id, status, count in await session.execute(
        select(col(Enrollment.journey_id), col(Enrollment.status), func.count()).group_by(
            col(Enrollment.journey_id), col(Enrollment.status)
        )
    ):
        counts.setdefault(journey_id, {})[status] = count
    rows = []
    for journey in journeys:
        by_status = counts.get(journey.id, {})
        entrants = sum(n for s, n in by_status.items() if s != EnrollmentStatus.NOT_ENROLLED)
        conversion = await goal_conversion(session, journey.key) if journey.id in live else None
        goal = conversion if conversion is not None and conversion.goal is not None else None
        rows.append(
            {
                "journey": journey,
                "version": live.get(journey.id),
                "entrants": entrants,
                "active": by_status.get("active", 0) + by_status.get("pending", 0),
                "conversion": goal.conversion_rate if goal else None,
            }
        )
    return _page(request, "journeys.html", rows=rows)


async def _flowchart(session: Any, key: str, version: int | None) -> tuple[Any, str]:
    analytics = await journey_analytics(session, key, version, with_goal=False, with_sends=False)
    journey = await session.scalar(select(Journey).where(col(Journey.key) == key))
    definition, _ = await journey_definition(session, journey, version)
    if definition is None:
        return analytics, "<p>This journey's definition cannot be drawn (it is not valid yet).</p>"
    query = f"?version={version}" if version else ""
    svg = flowchart_svg(
        definition,
        graph_order(definition),
        {s.step_id: s for s in analytics.steps},
        f"/console/journeys/{key}/steps/{{step}}{query}",
    )
    return analytics, svg


@router.get("/journeys/{journey_key}")
async def journey_page(
    request: Request,
    journey_key: str,
    key: ConsoleKey,
    session: SessionDep,
    version: Annotated[int | None, Query(ge=1, le=PG_INT_MAX)] = None,
    time_zone: str = "UTC",
) -> HTMLResponse:
    analytics = await journey_analytics(session, journey_key, version)
    _, svg = await _flowchart(session, journey_key, version)
    today = utcnow().date()
    daily = await daily_series(
        session, journey_key, today - timedelta(days=29), today, time_zone, version
    )
    labels = [day.isoformat() for day in daily.days]
    return _page(
        request,
        "journey.html",
        a=analytics,
        svg=svg,
        funnels=[(f, funnel_svg(f)) for f in analytics.sends],
        daily=[(name, bars_svg(labels, daily.counts[name], name)) for name in SERIES],
        daily_rows=daily.rows(),
        series=SERIES,
        version=version,
        time_zone=time_zone,
    )


@router.get("/journeys/{journey_key}/flowchart")
async def flowchart(
    journey_key: str,
    key: ConsoleKey,
    session: SessionDep,
    version: Annotated[int | None, Query(ge=1, le=PG_INT_MAX)] = None,
) -> HTMLResponse:
    """The flowchart alone, fetched by the page every few seconds to stay live."""
    _, svg = await _flowchart(session, journey_key, version)
    return HTMLResponse(svg, headers={"Cache-Control": "no-store"})


@router.get("/journeys/{journey_key}/steps/{step_id}")
async def step_page(
    request: Request,
    journey_key: str,
    step_id: str,
    key: ConsoleKey,
    session: SessionDep,
    resources: ResourcesDep,
    version: Annotated[int | None, Query(ge=1, le=PG_INT_MAX)] = None,
) -> HTMLResponse:
    journey = await session.scalar(select(Journey).where(col(Journey.key) == journey_key))
    if journey is None:
        raise NotFound(f"no journey {journey_key!r}")
    definition, _ = await journey_definition(session, journey, version)
    step = definition.steps.get(step_id) if definition else None
    query = (
        select(Enrollment, Contact)
        .join(Contact, col(Contact.id) == col(Enrollment.contact_id))
        .where(
            col(Enrollment.journey_id) == journey.id,
            col(Enrollment.current_step) == step_id,
            col(Enrollment.status).in_((EnrollmentStatus.PENDING, EnrollmentStatus.ACTIVE)),
        )
        .order_by(col(Enrollment.updated_at))
        .limit(MAX_LISTED)
    )
    if version is not None:
        query = query.where(col(Enrollment.version) == version)
    rows = [
        {
            "enrollment": enrollment,
            "contact": contact,
            "temporal_url": resources.workflow_url(enrollment.workflow_id),
        }
        for enrollment, contact in (await session.execute(query)).all()
    ]
    return _page(
        request,
        "step.html",
        journey=journey,
        step_id=step_id,
        what=describe(step) if step else None,
        rows=rows,
        limit=MAX_LISTED,
    )


# --- contacts -----------------------------------------------------------------------------


@router.get("/contacts/{contact_id}")
async def contact_page(
    request: Request,
    contact_id: uuid.UUID,
    key: ConsoleKey,
    session: SessionDep,
    resources: ResourcesDep,
) -> HTMLResponse:
    contact = await contact_out(session, contact_id)
    timeline = await contact_timeline(session, contact_id, limit=200)
    workflows = dict(
        (
            await session.execute(
                select(col(Enrollment.id), col(Enrollment.workflow_id)).where(
                    col(Enrollment.contact_id) == contact_id
                )
            )
        ).all()
    )
    return _page(
        request,
        "contact.html",
        c=contact,
        timeline=timeline.entries,
        temporal={eid: resources.workflow_url(wid) for eid, wid in workflows.items()},
    )


# --- the development mailbox --------------------------------------------------------------


@router.get("/mailbox")
async def mailbox_page(request: Request, key: ConsoleKey, session: SessionDep) -> HTMLResponse:
    messages = list(
        await session.scalars(
            select(OutboxMessage).order_by(col(OutboxMessage.created_at).desc()).limit(100)
        )
    )
    return _page(request, "mailbox.html", messages=messages)


async def _outbox_message(session: Any, message_id: uuid.UUID) -> OutboxMessage:
    message: OutboxMessage | None = await session.get(OutboxMessage, message_id)
    if message is None:
        raise NotFound(f"no message {message_id} in the outbox")
    return message


@router.get("/mailbox/{message_id}")
async def mailbox_message(
    request: Request, message_id: uuid.UUID, key: ConsoleKey, session: SessionDep
) -> HTMLResponse:
    message = await _outbox_message(session, message_id)
    return _page(request, "message.html", m=message, p=message.payload)


@router.get("/mailbox/{message_id}/body")
async def mailbox_body(message_id: uuid.UUID, key: ConsoleKey, session: SessionDep) -> Response:
    """The HTML exactly as sent, shown in a sandboxed frame: no scripts, links open in a new
    tab (as in a mail client) and go through their tracked redirects."""
    message = await _outbox_message(session, message_id)
    html = message.payload.get("html")
    if not html:
        text = message.payload.get("text") or ""
        html = f"<pre style='white-space:pre-wrap;font-family:sans-serif'>{escape(text)}</pre>"
    return HTMLResponse(
        '<base target="_blank">' + html,
        headers={
            "Cache-Control": "no-store",
            # What a mail client allows: no scripts, no forms; images and links work.
            "Content-Security-Policy": "default-src 'none'; img-src * data:; "
            "style-src 'unsafe-inline'; frame-ancestors 'self'",
            "X-Content-Type-Options": "nosniff",
        },
    )


# --- the weekly review --------------------------------------------------------------------


@router.get("/review")
async def review_page(request: Request, key: ConsoleKey, session: SessionDep) -> HTMLResponse:
    review = await weekly_review(session, utcnow())
    return _page(request, "review.html", review=review)


# --- offline API docs ---------------------------------------------------------------------


def _docs_router(app: FastAPI) -> APIRouter:
    docs = APIRouter(include_in_schema=False)

    @docs.get("/docs")
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/vendor/swagger-ui/favicon-32x32.png",
        )

    @docs.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API reference",
            redoc_js_url="/static/vendor/redoc/redoc.standalone.js",
            redoc_favicon_url="/static/vendor/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )

    return docs


def install(app: FastAPI) -> None:
    """Add the console, the offline docs and the static files to the app (created with
    docs_url=None and redoc_url=None, so these replace FastAPI's CDN-loading pages)."""

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse("/console/login", status_code=303)

    @app.get("/", include_in_schema=False)
    async def home() -> Response:
        return RedirectResponse("/console/", status_code=303)

    app.include_router(_docs_router(app))
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
