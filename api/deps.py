"""FastAPI dependencies: resources, a read session, the authenticated API key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from api.resources import Resources
from nurture.db.models import ApiKey
from nurture.errors import Unauthorized


async def get_resources(request: Request) -> Resources:
    # async: a plain `def` dependency would be run in the thread pool on every request.
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    """A session for reads. Writes go through services that own their transaction, so a
    workflow is only ever started after the row that records it has committed."""
    async with resources.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="an API key from `nurture api-key create`")


async def require_api_key(
    resources: ResourcesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    if credentials is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    key = await resources.api_keys.authenticate(resources.sessions, credentials.credentials)
    if key is None:
        raise Unauthorized("invalid or revoked API key")
    return key


ApiKeyDep = Annotated[ApiKey, Depends(require_api_key)]
