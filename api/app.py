"""The Nurture HTTP API.

    uvicorn api.app:create_app --factory      # or: nurture api / nurture dev

Every route lives under /v1 and needs an API key, except the health check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from api.contact_refs import ContactRefPaths
from api.deps import require_api_key
from api.errors import BodySizeLimit, install_error_handlers
from api.hosts import TrustedHosts
from api.input_guard import InputGuard, storable_path
from api.openapi import install_openapi
from api.outages import install_outage_handlers
from api.resources import Resources
from api.routes import PUBLIC_ROUTERS, ROUTERS, metrics
from api.routes.console import install as install_console
from nurture import scoring
from nurture.boot import require_secret_key
from nurture.channels.registry import channels_from_settings, close_channels
from nurture.db.engine import create_engine, session_factory
from nurture.metrics import RequestMetrics
from nurture.settings import Settings, get_settings
from nurture.temporal import connect

DESCRIPTION = """
Journeys for lifecycle marketing, run durably on Temporal. Draft and publish journeys, manage
contacts and lists, enroll contacts and send them events; trace any contact's enrollment in
the Temporal Web UI through the `temporal_url` of an enrollment.

Authenticate with `Authorization: Bearer <key>`; create keys with `nurture api-key create`.
Errors always look like `{"error": "<code>", "detail": ...}`.
"""


def create_app(resources: Resources | None = None, settings: Settings | None = None) -> FastAPI:
    """Build the app. Tests and `nurture dev` pass ready `resources`; otherwise the lifespan
    makes them, and a real SECRET_KEY is required (CommandError, saying how to make one)."""
    settings = settings or (resources.settings if resources else get_settings())
    if resources is None:
        require_secret_key(settings)
    scoring.configure(settings.score_field)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if resources is not None:
            app.state.resources = resources
            yield
            return
        if not settings.database_url:
            raise RuntimeError("DATABASE_URL is not set (nurture dev sets it for you)")
        engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
        sessions = session_factory(engine)
        channels = channels_from_settings(settings, sessions)  # for test sends
        try:
            client = await connect(settings)
            app.state.resources = Resources(settings, sessions, client, channels=channels)
            yield
        finally:
            await close_channels(channels)
            await engine.dispose()

    app = FastAPI(
        title="Nurture",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served by api.routes.console from the package's own assets: these load from a CDN.
        docs_url=None,
        redoc_url=None,
        # Starlette would answer `/v1/contacts/` with a redirect to `/v1/contacts` built from
        # the Host header, i.e. to whatever host the request names. Off: such paths are 404.
        redirect_slashes=False,
        openapi_tags=[
            {"name": "journeys", "description": "drafts, validation, published versions"},
            {"name": "contacts", "description": "people, their fields, tags and consent"},
            {"name": "lists", "description": "static lists; joining one can start journeys"},
            {"name": "enrollments", "description": "a contact's way through a journey"},
            {"name": "events", "description": "custom events that journeys wait for"},
            {"name": "templates", "description": "message content that send steps refer to"},
            {"name": "webhooks", "description": "provider callbacks, verified by signature"},
            {"name": "tracking", "description": "tracked links, open pixel and unsubscribe"},
            {"name": "api-keys", "description": "the API keys: list them, revoke one"},
        ],
    )
    if resources is not None:
        app.state.resources = resources  # also without a lifespan run (httpx ASGITransport)
    install_error_handlers(app)
    install_openapi(app)  # documents the error shapes the handlers answer with
    app.add_middleware(InputGuard)  # inside the size limit: reads bounded bodies only
    install_outage_handlers(app)  # Postgres or Temporal away: 503 with Retry-After
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ContactRefPaths)  # an encoded / in a contact reference stays in it
    app.add_middleware(RequestMetrics)  # API latency by route (nurture.metrics)
    app.add_middleware(TrustedHosts, allowed=settings.trusted_hosts())  # outermost: first

    @app.get("/health", tags=["health"], summary="Liveness check (no authentication)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key), Depends(storable_path)])
    for router in ROUTERS:
        v1.include_router(router)
    app.include_router(v1)
    public = APIRouter(prefix="/v1", dependencies=[Depends(storable_path)])
    for router in PUBLIC_ROUTERS:
        public.include_router(router)
    app.include_router(public)
    app.include_router(metrics.router)
    install_console(app)
    return app
