"""What the HTTP providers (SendGrid, Postmark, Mailgun, Twilio) share: one pooled client per
channel, and one rule for turning a provider's answer into a retry or a definitive failure.

The rule, for every provider: a 2xx is a success; a 4xx means the provider looked at this
request and refused it, so sending it again cannot help (`PermanentSendError`), except for 408,
409, 425 and 429, which say "not now"; a 5xx, any other status, a timeout or a broken connection
is temporary (`TemporarySendError`), and Temporal retries the send with backoff. Providers that
explain a refusal with their own error codes refine this in their module.
"""

import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr

from nurture.channels.base import (
    DeliveryReceipt,
    LookupUnavailable,
    OutgoingMessage,
    PermanentSendError,
    TemporarySendError,
)

logger = logging.getLogger("nurture.channels")

# 4xx statuses that mean "try again later" rather than "never": request timeout, conflict (a
# concurrent request with the same idempotency key), too early, rate limited; and refused
# credentials or sender (401, 403): that is our configuration, not the message, so messages
# wait (retried with backoff) until someone fixes the key instead of all failing for good.
RETRYABLE_CLIENT_STATUSES = frozenset({401, 403, 408, 409, 425, 429})

# The provider's error text goes into the exception message, which ends up in Temporal's history
# and (cut to 255 characters) in the message row: enough to diagnose, never a whole HTML page.
MAX_ERROR_TEXT = 500


# Failures before the request left: the provider cannot have the message.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def is_permanent_status(status_code: int) -> bool:
    return 400 <= status_code < 500 and status_code not in RETRYABLE_CLIENT_STATUSES


def error_text(response: httpx.Response) -> str:
    """The provider's explanation, on one line and truncated."""
    text = " ".join(response.text.split())
    if len(text) > MAX_ERROR_TEXT:
        text = text[: MAX_ERROR_TEXT - 1] + "…"
    return text or response.reason_phrase


def send_error(
    provider: str, response: httpx.Response, *, permanent: bool | None = None
) -> PermanentSendError | TemporarySendError:
    """The exception for a non-2xx answer; `permanent` overrides the status rule when the
    provider's own error code says more than its status does."""
    if permanent is None:
        permanent = is_permanent_status(response.status_code)
    error_class = PermanentSendError if permanent else TemporarySendError
    return error_class(f"{provider} answered {response.status_code}: {error_text(response)}")


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The response's JSON object, or {} when the body is not one (an HTML error page, say)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def require(value: str | SecretStr | None, env_name: str) -> str:
    """A setting a provider cannot work without, as a plain string."""
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not text:
        raise ValueError(f"{env_name} is not set")
    return text


class HttpChannel(ABC):
    """Base of the HTTP providers: holds the client (connection pool) and posts requests.

    Subclasses set `provider` and build the provider's request in `send`."""

    provider: ClassVar[str]

    def __init__(
        self,
        base_url: str,
        timeout_seconds: float,
        *,
        auth: httpx.Auth | tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_seconds),
            auth=auth,
            headers={"User-Agent": "nurture", "Accept": "application/json", **(headers or {})},
        )

    @abstractmethod
    async def send(self, message: OutgoingMessage) -> DeliveryReceipt: ...

    async def _post(self, path: str, **request: Any) -> httpx.Response:
        """POST and return the response whatever its status; a network failure becomes a
        `TemporarySendError`. A failure after the request went out (a read timeout, a lost
        connection) may hide a message the provider did accept: it says so
        (`maybe_accepted`), and the retry asks the provider before sending again."""
        try:
            return await self._client.post(path, **request)
        except httpx.TransportError as err:
            raise TemporarySendError(
                f"{self.provider}: {type(err).__name__}: {err or 'no detail'}",
                maybe_accepted=not isinstance(err, _NOT_SENT),
            ) from err

    async def _get(self, path: str, **request: Any) -> httpx.Response:
        """GET for a lookup: a 2xx response, or LookupUnavailable when the provider refuses the
        lookup for good (not on the plan, key without the permission), or TemporarySendError."""
        try:
            response = await self._client.get(path, **request)
        except httpx.TransportError as err:
            raise TemporarySendError(
                f"{self.provider} lookup: {type(err).__name__}: {err or 'no detail'}"
            ) from err
        if response.is_success:
            return response
        if 400 <= response.status_code < 500 and response.status_code not in (408, 425, 429):
            raise LookupUnavailable(
                f"{self.provider} lookup answered {response.status_code}: {error_text(response)}"
            )
        raise TemporarySendError(
            f"{self.provider} lookup answered {response.status_code}: {error_text(response)}"
        )

    def _receipt_id(self, value: object, what: str) -> str:
        """The provider's id for an accepted message. Accepted without one should not happen;
        it is logged rather than raised, because retrying an accepted message sends it twice."""
        if isinstance(value, str) and value:
            return value
        logger.warning("%s accepted a message but returned no %s", self.provider, what)
        return ""

    async def aclose(self) -> None:
        await self._client.aclose()
