"""The /v1 routers, one module per resource."""

from fastapi import APIRouter

ROUTERS: list[APIRouter] = []
