"""The /v1 routers, one module per resource."""

from fastapi import APIRouter

from api.routes import enrollments, events

ROUTERS: list[APIRouter] = [enrollments.router, events.router]
