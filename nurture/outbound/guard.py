"""SSRF protection for URLs users give Nurture (webhook steps).

A URL's host is resolved once, every address it resolves to is checked, and the connection
goes to the checked address (`PinnedTransport`), keeping the Host header and the TLS server
name of the URL: a DNS answer that changes between the check and the connection (DNS
rebinding) cannot redirect the call. Addresses that are not globally routable are refused:
loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16, where cloud
metadata lives, and fe80::/10), shared (100.64/10), multicast, reserved, unspecified. An
allowlist (`OUTBOUND_ALLOWLIST`) names addresses, networks or host names that may be called
anyway (an internal CRM; loopback servers in tests). Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedDestination(Exception):
    """The URL may not be called; retrying does not help."""


class UnresolvableHost(Exception):
    """The host did not resolve (maybe for now)."""


@dataclass(frozen=True)
class Allowlist:
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Sequence[str]) -> Allowlist:
        networks = []
        hosts = set()
        for entry in entries:
            text = entry.strip().lower()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                hosts.add(text.rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def why_blocked(address: IPAddress) -> str | None:
    """What kind of address this is, if it is not a public one; None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return why_blocked(address.ipv4_mapped)
    for kind in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if not address.is_global:
        return "not public"
    return None


@dataclass(frozen=True)
class Destination:
    url: str
    host: str
    port: int
    address: IPAddress


async def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UnresolvableHost(f"{host} does not resolve: {err.strerror or err}") from err
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise UnresolvableHost(f"{host} has no address")
    return found


async def check_url(url: str, allowlist: Allowlist) -> Destination:
    """Resolve the URL's host and check every address; the destination to connect to.

    Raises `BlockedDestination` (not http(s), a blocked address) or `UnresolvableHost`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BlockedDestination(f"{url[:100]!r} is not an http(s) URL")
    host = parts.hostname
    if not host:
        raise BlockedDestination(f"{url[:100]!r} has no host")
    if parts.username or parts.password:
        raise BlockedDestination("URLs with credentials in them are refused")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:
        raise BlockedDestination(f"bad port in {url[:100]!r}") from err
    addresses = await resolve(host, port)
    if not allowlist.allows_host(host):
        for address in addresses:
            kind = why_blocked(address)
            if kind is not None and not allowlist.allows_address(address):
                shown = host if str(address) == host else f"{host} ({address})"
                raise BlockedDestination(
                    f"destination {shown} is {kind}: refused (not in OUTBOUND_ALLOWLIST)"
                )
    return Destination(url=url, host=host, port=port, address=addresses[0])


class PinnedTransport(httpx.AsyncBaseTransport):
    """Sends every request to one checked address. The request keeps its Host header (set
    by httpx from the URL) and, over TLS, the URL's host as server name (SNI) and for the
    certificate check: only the TCP connection goes to the pinned address."""

    def __init__(self, destination: Destination, **transport_options: object) -> None:
        self._destination = destination
        self._inner = httpx.AsyncHTTPTransport(**transport_options)  # type: ignore[arg-type]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != self._destination.host:
            raise BlockedDestination(f"{request.url.host} is not the checked destination")
        request.url = request.url.copy_with(host=str(self._destination.address))
        if request.url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": self._destination.host}
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def pinned_client(
    destination: Destination, timeout: float, verify: ssl.SSLContext | bool = True
) -> httpx.AsyncClient:
    """A client bound to one checked destination: no redirects, no proxies from the
    environment (a proxy would do its own resolving). `verify`: the certificate check (the
    system's CAs; a context of its own in tests)."""
    return httpx.AsyncClient(
        transport=PinnedTransport(destination, verify=verify),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )
