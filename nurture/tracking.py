"""Tracked links, the open pixel and unsubscribe links: signed URLs that identify a message.

Every URL carries an HMAC-signed token (itsdangerous, SHA-256) holding our message id and, for
a click, the link's name and destination. Nothing about the contact is in it: the message id
leads to the contact on our side only. A token cannot be forged or altered without the
`SECRET_KEY`, so the click redirect is not an open redirect.

Links are named in templates with `data-link="purchase"` on the `<a>`, which is what a journey's
`clicked` condition refers to; a link without one is named by its URL. `data-track="off"` keeps
a link as it is; mailto:, tel:, in-page anchors and our own URLs (unsubscribe) are never
rewritten.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from html.parser import HTMLParser
from typing import Any, Literal

from itsdangerous import BadSignature, URLSafeSerializer

TokenPurpose = Literal["click", "open", "unsubscribe"]

LINK_NAME_MAX = 128  # events.link


class InvalidToken(Exception):
    """A token that was not made with our secret, was altered, or is for another purpose."""


@dataclass(frozen=True)
class ClickTarget:
    message_id: uuid.UUID
    link: str
    url: str


class Tracker:
    """Makes and reads the signed URLs of one deployment (its public base URL and secret)."""

    def __init__(self, public_base_url: str, secret_key: str) -> None:
        self.base_url = public_base_url.rstrip("/")
        self._serializers = {
            purpose: URLSafeSerializer(
                secret_key, salt=f"nurture-{purpose}", signer_kwargs={"digest_method": _sha256}
            )
            for purpose in ("click", "open", "unsubscribe")
        }

    # --- URLs ---------------------------------------------------------------------------
    def click_url(self, message_id: uuid.UUID, link: str, url: str) -> str:
        token = self._dumps("click", {"m": message_id.hex, "l": link, "u": url})
        return f"{self.base_url}/v1/t/c/{token}"

    def open_url(self, message_id: uuid.UUID) -> str:
        return f"{self.base_url}/v1/t/o/{self._dumps('open', {'m': message_id.hex})}.gif"

    def unsubscribe_url(self, message_id: uuid.UUID) -> str:
        return f"{self.base_url}/v1/u/{self._dumps('unsubscribe', {'m': message_id.hex})}"

    def unsubscribe_headers(self, message_id: uuid.UUID) -> dict[str, str]:
        """RFC 2369 + RFC 8058: mail clients show an unsubscribe button that POSTs one click."""
        return {
            "List-Unsubscribe": f"<{self.unsubscribe_url(message_id)}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    # --- tokens -------------------------------------------------------------------------
    def read_click(self, token: str) -> ClickTarget:
        data = self._loads("click", token)
        try:
            return ClickTarget(uuid.UUID(hex=data["m"]), str(data["l"]), str(data["u"]))
        except (KeyError, ValueError, TypeError) as err:
            raise InvalidToken("malformed click token") from err

    def read_message_id(self, purpose: Literal["open", "unsubscribe"], token: str) -> uuid.UUID:
        data = self._loads(purpose, token)
        try:
            return uuid.UUID(hex=data["m"])
        except (KeyError, ValueError, TypeError) as err:
            raise InvalidToken(f"malformed {purpose} token") from err

    def _dumps(self, purpose: TokenPurpose, data: dict[str, str]) -> str:
        token: str = self._serializers[purpose].dumps(data)
        return token

    def _loads(self, purpose: TokenPurpose, token: str) -> dict[str, Any]:
        try:
            data = self._serializers[purpose].loads(token)
        except BadSignature as err:
            raise InvalidToken(f"invalid {purpose} token") from err
        if not isinstance(data, dict):
            raise InvalidToken(f"malformed {purpose} token")
        return data

    # --- HTML ---------------------------------------------------------------------------
    def track_html(
        self, html: str, message_id: uuid.UUID, *, clicks: bool = True, opens: bool = True
    ) -> str:
        """Rewrite the links of a rendered email to tracked redirects and add the open pixel."""
        if clicks:
            html = _rewrite_links(
                html,
                lambda link, url: self.click_url(message_id, link, url),
                own_prefix=self.base_url,
            )
        if opens:
            pixel = (
                f'<img src="{escape(self.open_url(message_id))}" width="1" height="1" alt="" '
                'style="display:none;border:0">'
            )
            closing = re.search(r"</body\s*>", html, flags=re.IGNORECASE)
            html = (
                html[: closing.start()] + pixel + html[closing.start() :]
                if closing
                else html + pixel
            )
        return html


def _sha256(data: bytes = b"") -> Any:
    return hashlib.sha256(data)


class _AnchorFinder(HTMLParser):
    """Finds the start tags of <a href> elements, with their offsets in the source."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.anchors: list[tuple[int, int, dict[str, str | None]]] = []
        self._line_offsets: list[int] = []

    def find(self, html: str) -> list[tuple[int, int, dict[str, str | None]]]:
        self._line_offsets = [0]
        for line in html.splitlines(keepends=True):
            self._line_offsets.append(self._line_offsets[-1] + len(line))
        self.feed(html)
        self.close()
        return self.anchors

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            return
        line, column = self.getpos()
        start = self._line_offsets[line - 1] + column
        text = self.get_starttag_text() or ""
        self.anchors.append((start, start + len(text), dict(attrs)))


_HREF = re.compile(r"""(\bhref\s*=\s*)(?:"[^"]*"|'[^']*'|[^\s>]+)""", re.IGNORECASE)
_UNTRACKED = ("mailto:", "tel:", "sms:", "#", "javascript:")


def _rewrite_links(html: str, tracked: Callable[[str, str], str], own_prefix: str) -> str:
    pieces: list[str] = []
    done = 0
    for start, end, attrs in _AnchorFinder().find(html):
        href = (attrs.get("href") or "").strip()
        if (
            not href
            or href.lower().startswith(_UNTRACKED)
            or href.startswith(own_prefix)
            or (attrs.get("data-track") or "").lower() == "off"
            or "{{" in href  # unrendered: never happens after rendering, but never break it
        ):
            continue
        name = (attrs.get("data-link") or href)[:LINK_NAME_MAX]
        replacement = escape(tracked(name, href))
        tag = html[start:end]
        new_tag = _HREF.sub(
            lambda match, new=replacement: f'{match.group(1)}"{new}"',  # type: ignore[misc]
            tag,
            count=1,
        )
        pieces.append(html[done:start])
        pieces.append(new_tag)
        done = end
    pieces.append(html[done:])
    return "".join(pieces)


# --- machine opens ----------------------------------------------------------------------
# Apple Mail Privacy Protection fetches every image through Apple's proxies when a message is
# delivered, with a bare "Mozilla/5.0" user agent, from Apple's 17.0.0.0/8 network; security
# scanners and prefetchers announce themselves. Such opens are recorded as machine opens and
# not counted as a person opening the message.
_APPLE_NETWORK = ipaddress.ip_network("17.0.0.0/8")
_MACHINE_AGENTS = re.compile(
    r"^Mozilla/5\.0$|bot|crawler|spider|prefetch|preview|scanner|barracuda|mimecast|"
    r"proofpoint|symantec|messagelabs|python-requests|curl/|wget/|go-http-client",
    re.IGNORECASE,
)


def is_machine_open(user_agent: str | None, client_ip: str | None) -> bool:
    if not user_agent or _MACHINE_AGENTS.search(user_agent.strip()):
        return True
    if client_ip:
        try:
            if ipaddress.ip_address(client_ip) in _APPLE_NETWORK:
                return True
        except ValueError:
            pass
    return False


# A transparent 1x1 GIF.
PIXEL_GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)


def tracked_links(html: str, own_prefix: str) -> list[tuple[str, str]]:
    """The (name, url) of each link `Tracker.track_html` would track in `html`, in order: what
    a journey's `clicked` conditions can refer to (used by simulations)."""
    found: list[tuple[str, str]] = []

    def collect(name: str, url: str) -> str:
        found.append((name, url))
        return url

    _rewrite_links(html, collect, own_prefix=own_prefix)
    return found
