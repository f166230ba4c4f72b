"""The /v1 routers, one module per resource."""

from fastapi import APIRouter

from api.routes import contacts, enrollments, events, journeys, lists, templates

ROUTERS: list[APIRouter] = [
    journeys.router,
    templates.router,
    contacts.router,
    lists.router,
    enrollments.router,
    events.router,
]
