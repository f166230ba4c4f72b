"""GET /metrics: Prometheus metrics (see `nurture.metrics` for what and who may scrape)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.deps import ResourcesDep
from nurture.metrics import CONTENT_TYPE, exposition, may_scrape

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Enrollments, messages, events and webhook events counted in Postgres; this "
    "process's API latency and webhook refusals. With METRICS_TOKEN set, send it as "
    "`Authorization: Bearer <METRICS_TOKEN>`; without it only loopback clients are answered. "
    "See docs/analytics.md.",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 403: {"description": "not allowed"}},
)
async def metrics(request: Request, resources: ResourcesDep) -> Response:
    token = resources.settings.metrics_token
    allowed = may_scrape(
        token.get_secret_value() if token else None,
        request.headers.get("authorization"),
        request.client.host if request.client else None,
    )
    if not allowed:
        detail = (
            "send METRICS_TOKEN as 'Authorization: Bearer <token>'"
            if token
            else "set METRICS_TOKEN to scrape from another host; without it only loopback may"
        )
        return Response(
            f'{{"error": "forbidden", "detail": "{detail}"}}',
            status_code=403,
            media_type="application/json",
        )
    return Response(await exposition(resources.sessions), media_type=CONTENT_TYPE)
