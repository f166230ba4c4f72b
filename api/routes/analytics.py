"""Journey analytics: how many contacts are where, what each send did, day by day."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import SessionDep
from api.schemas.analytics import DailyOut, JourneyAnalyticsOut
from api.schemas.common import PG_INT_MAX, IsoDate
from nurture.analytics.daily import daily_series
from nurture.analytics.journey import journey_analytics
from nurture.db.models import utcnow

router = APIRouter(prefix="/journeys", tags=["journeys"])


@router.get(
    "/{key}/analytics",
    response_model=JourneyAnalyticsOut,
    summary="Per-step counts and per-send funnels",
    description="For every step: entered, there now, passed, exits by reason and outcomes; for "
    "every send step: sent, skipped and failed by reason, delivered, opened by people, clicked "
    "(per link), bounced, complained, unsubscribed, with rates; and the goal conversion. "
    "`version` counts only enrollments in that version (default: all). See docs/analytics.md.",
)
async def get_analytics(
    key: str,
    session: SessionDep,
    version: Annotated[int | None, Query(ge=1, le=PG_INT_MAX)] = None,
) -> JourneyAnalyticsOut:
    return JourneyAnalyticsOut.of(await journey_analytics(session, key, version))


@router.get(
    "/{key}/analytics/daily",
    response_model=DailyOut,
    summary="Daily series for a date range",
    description="Per day (midnight to midnight in `time_zone`, an IANA name): entered, ended, "
    "goal_met, sent, opened, clicked, complained, unsubscribed. Default: the last 30 days; at "
    "most 366 days.",
)
async def get_daily(
    key: str,
    session: SessionDep,
    start: Annotated[IsoDate | None, Query(alias="from")] = None,
    end: Annotated[IsoDate | None, Query(alias="to")] = None,
    time_zone: str = "UTC",
    version: Annotated[int | None, Query(ge=1, le=PG_INT_MAX)] = None,
) -> DailyOut:
    end = end or utcnow().date()
    start = start or end - timedelta(days=29)
    series = await daily_series(session, key, start, end, time_zone, version)
    return DailyOut(
        journey_key=series.journey_key,
        version=series.version,
        time_zone=series.time_zone,
        days=series.rows(),
    )
