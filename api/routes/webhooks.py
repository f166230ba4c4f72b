"""Provider webhooks at /v1/webhooks/{provider}: authenticated by the provider's signature,
not by an API key.

The raw body is read before anything parses it, since signatures are over the exact bytes.
A request that fails authentication is refused (401) before anything is stored. While
Postgres is away, verified events are kept in the local spool and stored once it is back
(`nurture.engagement_spool`).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Request

from api.deps import ResourcesDep
from api.schemas.webhooks import WebhookReceipt
from nurture.db.engine import database_away
from nurture.engagement_spool import engagement_spool, webhook_record
from nurture.errors import BadRequest, NotFound, Unauthorized
from nurture.metrics import webhook_refused
from nurture.webhooks import PROVIDERS, SnsHttp, WebhookRequest, receive
from nurture.webhooks.ingest import deliver, store

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
logger = logging.getLogger("nurture.webhooks")

_SNS_HTTP = SnsHttp()


def get_sns_http() -> SnsHttp:
    """One per process, so SNS certificates stay cached; tests override this dependency."""
    return _SNS_HTTP


SnsHttpDep = Annotated[SnsHttp, Depends(get_sns_http)]


@router.post(
    "/{provider}",
    response_model=WebhookReceipt,
    summary="Receive a provider's delivery, bounce, complaint and engagement events",
    description=f"For {', '.join(PROVIDERS)}. Each request is verified the provider's way "
    "(signature or credentials), its events stored once each (a redelivery counts as a "
    "duplicate), then acted on: hard bounces, complaints and unsubscribes suppress the "
    "contact on the message's channel; opens and clicks reach the enrollment that sent it.",
    responses={
        400: {"description": "the body is not what this provider sends"},
        401: {"description": "bad or missing signature/credentials, or not configured"},
        404: {"description": "unknown provider"},
    },
)
async def receive_webhook(
    provider: str,
    request: Request,
    resources: ResourcesDep,
    sns: SnsHttpDep,
    background: BackgroundTasks,
) -> WebhookReceipt:
    if provider not in PROVIDERS:
        raise NotFound(f"no webhook for provider {provider!r}; one of {', '.join(PROVIDERS)}")
    incoming = WebhookRequest(
        body=await request.body(),
        headers={name.lower(): value for name, value in request.headers.items()},
        path=request.url.path,
        query=request.url.query,
    )
    try:
        events = await receive(provider, incoming, resources.settings, sns)
    except BadRequest as err:
        logger.warning("webhook %s: malformed request: %s", provider, err.message)
        webhook_refused(provider, "malformed")
        raise
    except Unauthorized as err:
        logger.warning("webhook %s: refused: %s", provider, err.message)
        webhook_refused(provider, "unauthorized")
        raise
    # Stored and acted on in one transaction, then answered: the opens and clicks are signalled
    # after the answer (a provider times out slow receivers and delivers the batch again). Until
    # they are, the stored rows are the record the worker's redelivery covers.
    spool = engagement_spool(resources.settings.data_dir)
    try:
        stored = await store(resources.sessions, events)
    except Exception as err:
        if not database_away(err):
            raise
        # Verified, so worth keeping; not every provider retries for long (Twilio's status
        # callbacks not at all by default): spooled, and stored once Postgres is back. A
        # spool that cannot be written raises: 503, and the provider may retry.
        spool.keep(webhook_record(events))
        spool.kick(resources.sessions, resources.temporal, resources.enrollment_options)
        logger.warning("webhook %s: database away, %d events spooled", provider, len(events))
        return WebhookReceipt(received=len(events), duplicates=0, unmatched=0)
    background.add_task(
        deliver, resources.sessions, resources.temporal, stored, resources.enrollment_options
    )
    spool.kick(resources.sessions, resources.temporal, resources.enrollment_options)
    result = stored.result
    return WebhookReceipt(
        received=result.received, duplicates=result.duplicates, unmatched=result.unmatched
    )
