"""Provider webhooks at /v1/webhooks/{provider}: authenticated by the provider's signature,
not by an API key."""

from fastapi import APIRouter

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
