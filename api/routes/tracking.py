"""What recipients reach from a message: tracked links, the open pixel, unsubscribe.
Authenticated by the HMAC-signed token in the URL, not by an API key."""

from fastapi import APIRouter

router = APIRouter(tags=["tracking"])
