"""API keys: list them, revoke one. Keys are created with `nurture api-key create` only, so a
key that leaked cannot mint others; `nurture api-key list / revoke` do the same as these.

A key cannot revoke itself here (409): whoever calls the API always keeps a working key, so
no request can lock every client out. Revoke the current key with another key or with
`nurture api-key revoke`.

The key is refused at once by the process that revoked it; other API processes trust a key
they checked for up to `nurture.apikeys.KEY_CACHE_SECONDS` (10 s), and refuse it after that.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from api.deps import ApiKeyDep, ResourcesDep
from api.schemas.api_keys import ApiKeyList, ApiKeyOut
from api.schemas.common import error_responses
from nurture.apikeys import KEY_CACHE_SECONDS, list_api_keys, revoke_api_key

router = APIRouter(prefix="/api-keys", tags=["api-keys"])


@router.get(
    "",
    response_model=ApiKeyList,
    summary="List the API keys",
    description="Every key, revoked ones too, oldest first: name, prefix, when it was created, "
    "last used and revoked. Secrets are never shown (only their digest is stored).",
    responses=error_responses(),
)
async def list_keys(resources: ResourcesDep, current: ApiKeyDep) -> ApiKeyList:
    keys = await list_api_keys(resources.sessions)
    return ApiKeyList(items=[ApiKeyOut.of(key, current.id) for key in keys])


@router.delete(
    "/{key_id}",
    response_model=ApiKeyOut,
    summary="Revoke an API key",
    description="The key stops working at once in the API process that answers, and within "
    f"{KEY_CACHE_SECONDS:g} s in the others (each trusts a key it checked that long). The key "
    "stays listed, with `revoked_at`. Revoking a revoked key changes nothing. A key cannot "
    "revoke itself (409): use another key, or `nurture api-key revoke`.",
    responses=error_responses(
        {404: "no API key with this id", 409: "this is the key making the request"}
    ),
)
async def revoke_key(key_id: uuid.UUID, resources: ResourcesDep, current: ApiKeyDep) -> ApiKeyOut:
    revoked = await revoke_api_key(resources.sessions, key_id, keep=current.id)
    resources.api_keys.forget(revoked.key.id)
    return ApiKeyOut.of(revoked.key, current.id)
