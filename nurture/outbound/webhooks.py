"""Webhook steps: render the request from the contact, sign it, send it to a checked address.

What the receiver gets:

- `Idempotency-Key`: the same on every retry of one step run (`<enrollment>:<step>:<visit>`),
  so a receiver can drop a repeat;
- `X-Nurture-Timestamp` and `X-Nurture-Signature: v1=<hex>`: HMAC-SHA256 of
  `"<timestamp>.<body>"` with the signing secret (`WEBHOOK_SIGNING_SECRET`), to check that
  the call comes from this Nurture and is fresh (`verify_signature` shows how);
- `Content-Type: application/json` and the body: the step's `body`, every string in it
  rendered as a template (sandboxed, within the render limits), so values are JSON-escaped.

Outcomes: a 2xx returns the selected response fields; a 4xx (but 408 and 429) is final
(`WebhookRefused`); a 5xx, 408, 429, a timeout or a connection error is `WebhookUnavailable`,
which the workflow retries with backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from nurture.content.isolation import render_part_isolated
from nurture.content.rendering import TemplateContent
from nurture.journeys.definition import WebhookStep
from nurture.outbound.guard import (
    Allowlist,
    BlockedDestination,
    UnresolvableHost,
    check_url,
    pinned_client,
)

SIGNATURE_HEADER = "X-Nurture-Signature"
TIMESTAMP_HEADER = "X-Nurture-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_RETRYABLE_4XX = {408, 425, 429}
_MAX_RESPONSE_BYTES = 1_000_000


class WebhookRefused(Exception):
    """Final: the destination is not allowed, the receiver answered 4xx, or the response
    cannot be used. Retrying would get the same answer."""


class WebhookUnavailable(Exception):
    """Worth retrying: a 5xx, a timeout, a connection error."""


@dataclass(frozen=True)
class WebhookResponse:
    status: int
    saved: dict[str, Any] = field(default_factory=dict)


def signing_key(secret: str) -> bytes:
    return secret.encode()


def sign(key: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_signature(
    key: bytes, timestamp: str, body: bytes, header: str, tolerance: float = 300
) -> bool:
    """What a receiver does: recompute the HMAC and compare in constant time; refuse stale
    timestamps (a replayed call)."""
    try:
        at = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - at) > tolerance:
        return False
    return hmac.compare_digest(sign(key, at, body), header)


async def render_value(value: Any, context: Mapping[str, Any], key: str, place: str) -> Any:
    """Every string in a JSON value rendered as a template (text, not HTML)."""
    if isinstance(value, str):
        if "{" not in value:
            return value
        template = TemplateContent(key=f"{key}.{place}", channel="webhook", version=1, text=value)
        return await render_part_isolated(template, "text", context)
    if isinstance(value, dict):
        return {k: await render_value(v, context, key, f"{place}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [await render_value(v, context, key, f"{place}.{i}") for i, v in enumerate(value)]
    return value


def pick(document: Any, pointer: str) -> Any:
    """`owner.id` or `items.0.id` from a JSON document; None when absent."""
    current = document
    for part in pointer.split("."):
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
    return current


async def call_webhook(
    step: WebhookStep,
    context: Mapping[str, Any],
    *,
    template_key: str,
    idempotency_key: str,
    secret: bytes,
    allowlist: Allowlist,
) -> WebhookResponse:
    url = await render_value(step.url, context, template_key, "url")
    headers = {
        name: str(await render_value(value, context, template_key, f"headers.{name}"))
        for name, value in step.headers.items()
    }
    body = b""
    if step.body is not None and step.method != "GET":
        rendered = await render_value(step.body, context, template_key, "body")
        body = json.dumps(rendered, separators=(",", ":"), ensure_ascii=False).encode()
        headers["Content-Type"] = "application/json"
    timestamp = int(time.time())
    headers[IDEMPOTENCY_HEADER] = idempotency_key
    headers[TIMESTAMP_HEADER] = str(timestamp)
    headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    headers.setdefault("User-Agent", "Nurture-Webhook/1")
    try:
        destination = await check_url(str(url), allowlist)
    except BlockedDestination as err:
        raise WebhookRefused(str(err)) from err
    except UnresolvableHost as err:
        raise WebhookUnavailable(str(err)) from err
    try:
        async with pinned_client(destination, step.timeout_seconds) as client:
            response = await client.request(step.method, str(url), content=body, headers=headers)
    except BlockedDestination as err:
        raise WebhookRefused(str(err)) from err
    except httpx.TimeoutException as err:
        raise WebhookUnavailable(f"no answer within {step.timeout_seconds:g} s") from err
    except httpx.HTTPError as err:
        raise WebhookUnavailable(f"{type(err).__name__}: {err}"[:200]) from err
    status = response.status_code
    reason = f"HTTP {status} {response.reason_phrase}".strip()
    if status >= 500 or status in _RETRYABLE_4XX:
        raise WebhookUnavailable(reason)
    if 300 <= status < 400:
        raise WebhookRefused(f"{reason}: redirects are not followed")
    if status >= 400:
        raise WebhookRefused(f"{reason}: {_excerpt(response)}".rstrip(": "))
    saved: dict[str, Any] = {}
    if step.save:
        if len(response.content) > _MAX_RESPONSE_BYTES:
            raise WebhookRefused(f"{reason}, but the response is over 1 MB: nothing saved")
        try:
            document = response.json()
        except ValueError as err:
            raise WebhookRefused(f"{reason}, but the response is not JSON: nothing saved") from err
        saved = {name: pick(document, pointer) for name, pointer in step.save.items()}
    return WebhookResponse(status=status, saved=saved)


def _excerpt(response: httpx.Response) -> str:
    text = " ".join(response.text[:300].split())
    return text[:150]
