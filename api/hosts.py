"""Trusted hosts: a request whose Host header names no host of ours is refused (400).

Nothing in the API builds a URL from the Host header (links in messages come from
PUBLIC_BASE_URL, and slash redirects are off: see `api.app`), so a forged Host cannot be
echoed into a redirect or a link; refusing it also keeps such requests away from the routes
altogether. The hosts are `Settings.trusted_hosts()`: PUBLIC_BASE_URL's host, loopback, and
ALLOWED_HOSTS (`*.example.com` matches subdomains, `*` any host).

`/health` answers whatever the Host, so that probes that address the process by its IP keep
working; it says nothing but "ok".
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

# /metrics builds no URL either and proves itself with METRICS_TOKEN (Prometheus addresses
# each replica by its own name or IP).
UNCHECKED_PATHS = frozenset({"/health", "/metrics"})


def host_name(header: str) -> str:
    """The host of a Host header, without its port, lower-cased; `[::1]:8000` gives `::1`."""
    value = header.strip().lower()
    if value.startswith("["):  # an IPv6 literal
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    name, _, _port = value.partition(":")
    return name.rstrip(".")


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


class TrustedHosts:
    """ASGI middleware refusing requests (HTTP and WebSocket) for a host not in `allowed`."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = [pattern.strip().lower() for pattern in allowed if pattern.strip()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in UNCHECKED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if host and host_allowed(host, self.allowed):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        # The allowed hosts are not listed: ALLOWED_HOSTS may name internal hosts.
        detail = (
            f"unknown host {host[:100]!r}: the API answers to the host of PUBLIC_BASE_URL, "
            "loopback and ALLOWED_HOSTS"
            if host
            else "the request has no Host header"
        )
        body = json.dumps({"error": "bad_request", "detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
