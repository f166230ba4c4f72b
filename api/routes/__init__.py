"""The /v1 routers, one module per resource."""

from fastapi import APIRouter

from api.routes import (
    analytics,
    api_keys,
    contacts,
    enrollments,
    events,
    imports,
    journeys,
    launch,
    lists,
    segments,
    send_rules,
    simulation,
    steps,
    templates,
    timeline,
    tracking,
    webhooks,
)

# Behind an API key. The routers of the busiest requests first: a request is matched against
# the routes in this order, in Python, one by one (at about 30 routes before it, matching took
# 6 % of the API's time on `POST /v1/events`). No path of these two is another router's.
# The OpenAPI document groups operations by tag, so this order does not show there.
ROUTERS: list[APIRouter] = [
    events.router,
    enrollments.router,
    journeys.router,
    templates.router,
    contacts.router,
    lists.router,
    segments.router,
    imports.router,
    timeline.router,
    api_keys.router,
    send_rules.router,
    steps.router,
    launch.router,
    simulation.router,
    analytics.router,
]

# Reached by recipients and providers: each request proves itself with a signature.
PUBLIC_ROUTERS: list[APIRouter] = [
    webhooks.router,
    tracking.router,
]
