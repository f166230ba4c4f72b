"""Domain errors. Each carries the HTTP status the API answers with, so there is one handler."""

from typing import Any


class NurtureError(Exception):
    status_code = 400
    error = "bad_request"

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class BadRequest(NurtureError):
    """A request the server cannot read at all (e.g. a webhook body that is not the provider's
    format); distinct from `Invalid`, which is a readable request with wrong values."""

    status_code = 400
    error = "bad_request"


class Unauthorized(NurtureError):
    status_code = 401
    error = "unauthorized"
    # The WWW-Authenticate header of the answer: how to authenticate (RFC 9110).
    challenge = 'Bearer realm="nurture"'


class NotFound(NurtureError):
    status_code = 404
    error = "not_found"


class Conflict(NurtureError):
    status_code = 409
    error = "conflict"


class Invalid(NurtureError):
    status_code = 422
    error = "invalid"


class PayloadTooLarge(NurtureError):
    status_code = 413
    error = "payload_too_large"


class Unavailable(NurtureError):
    """Temporal could not be reached to signal or start workflows; the message says what was
    saved and whether repeating the request finishes the job."""

    status_code = 503
    error = "unavailable"
