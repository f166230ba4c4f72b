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

# Behind an API key.
ROUTERS: list[APIRouter] = [
    journeys.router,
    templates.router,
    contacts.router,
    lists.router,
    enrollments.router,
    events.router,
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
