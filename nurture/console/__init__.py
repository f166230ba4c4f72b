"""The web console: server-rendered pages (Jinja2) over the analytics, the flowchart, contacts
and the development mailbox, with their static files served from this package (no CDN).

Signing in: the login form takes an API key; the answer is a session cookie holding the key's
id, signed with SECRET_KEY (itsdangerous, timestamped: 12 hours), HttpOnly, SameSite=Strict,
Secure when the console is reached over HTTPS. Each page checks that the key is still live, so
revoking a key ends its sessions. The key itself is never in a URL or a cookie.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner
from starlette.templating import Jinja2Templates

from nurture.audience.timeline import EXIT_REASONS

PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIR = PACKAGE_DIR / "static"
TEMPLATES_DIR = PACKAGE_DIR / "templates"

SESSION_COOKIE = "nurture_session"
SESSION_SECONDS = 12 * 3600

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))

# How an enrollment that ended at a step ended, by what analytics counts it under (its
# `exit_reason`, or its status when it has none).
_ENDED_WORDS = {
    **EXIT_REASONS,
    "completed": "completed the journey",
    "failed": "failed",
    "not_enrolled": "not entered",
}


def ended_words(reason: str) -> str:
    """Words for a key of a step's `exits` (analytics): "goal_met" -> "met its goal"."""
    return _ENDED_WORDS.get(reason, reason)


templates.env.filters["ended_words"] = ended_words


def _signer(secret: str) -> TimestampSigner:
    return TimestampSigner(secret, salt="nurture-console-session", digest_method=hashlib.sha256)


def session_token(secret: str, key_id: uuid.UUID) -> str:
    return _signer(secret).sign(key_id.hex).decode()


def read_session(secret: str, token: str | None) -> uuid.UUID | None:
    """The API key id of a valid, unexpired session cookie, or None."""
    if not token:
        return None
    try:
        value = _signer(secret).unsign(token, max_age=SESSION_SECONDS)
        return uuid.UUID(hex=value.decode())
    except (BadSignature, SignatureExpired, ValueError):
        return None
