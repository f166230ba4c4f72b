"""Push through Firebase Cloud Messaging, HTTP v1 API.

Authentication is OAuth 2.0 for a service account: a JWT (RS256, signed with the key of the
service account JSON file) is exchanged at the token endpoint (`token_uri` of the file, or
FCM_TOKEN_URL) for an access token, kept until shortly before it expires and renewed once on
a 401. A message goes to one registration token:

    POST {FCM_BASE_URL}/v1/projects/{project}/messages:send
    {"message": {"token": ..., "notification": {"title", "body"}, "data": {...}}}

FCM answers 200 with {"name": "projects/p/messages/<id>"}, or an error
{"error": {"code", "message", "status", "details": [{"@type": ".../FcmError", "errorCode"}]}}.
UNREGISTERED (404), and INVALID_ARGUMENT naming `message.token`, mean the token is no good:
`InvalidDeviceToken`, and the caller removes it. Other 4xx are final for this message;
UNAVAILABLE, INTERNAL, QUOTA_EXCEEDED (429) and 5xx are retried.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt

from nurture.channels.base import DeliveryReceipt, OutgoingMessage, TemporarySendError
from nurture.channels.http import HttpChannel, json_body, send_error
from nurture.channels.push import InvalidDeviceToken
from nurture.settings import Settings

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_RENEW_BEFORE = 60  # seconds before expiry a token is renewed


class ServiceAccount:
    def __init__(self, info: dict[str, Any], token_url: str | None = None) -> None:
        try:
            self.client_email: str = info["client_email"]
            self.private_key: str = info["private_key"]
        except KeyError as err:
            raise ValueError(f"the service account key lacks {err.args[0]!r}") from err
        self.project_id: str | None = info.get("project_id")
        self.token_url: str = token_url or info.get(
            "token_uri", "https://oauth2.googleapis.com/token"
        )
        self.key_id: str | None = info.get("private_key_id")

    @classmethod
    def from_file(cls, path: Path, token_url: str | None = None) -> ServiceAccount:
        return cls(json.loads(path.read_text()), token_url)

    def assertion(self, now: int) -> str:
        claims = {
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_url,
            "iat": now,
            "exp": now + 3600,
        }
        headers = {"kid": self.key_id} if self.key_id else None
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers=headers)


class FcmChannel(HttpChannel):
    provider = "fcm"

    def __init__(
        self,
        account: ServiceAccount,
        project_id: str,
        base_url: str = "https://fcm.googleapis.com",
        timeout_seconds: float = 20,
    ) -> None:
        super().__init__(base_url, timeout_seconds)
        self._account = account
        self._project = project_id
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> FcmChannel:
        if settings.fcm_service_account_file is None:
            raise ValueError("PUSH_CHANNEL=fcm needs FCM_SERVICE_ACCOUNT_FILE")
        account = ServiceAccount.from_file(
            settings.fcm_service_account_file, settings.fcm_token_url
        )
        project = settings.fcm_project_id or account.project_id
        if not project:
            raise ValueError("PUSH_CHANNEL=fcm needs FCM_PROJECT_ID (or a key file with one)")
        return cls(account, project, settings.fcm_base_url, settings.provider_timeout_seconds)

    async def access_token(self, *, renew: bool = False) -> str:
        async with self._lock:
            if not renew and self._token and time.time() < self._expires_at - _RENEW_BEFORE:
                return self._token
            now = int(time.time())
            try:
                response = await self._client.post(
                    self._account.token_url,
                    data={
                        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                        "assertion": self._account.assertion(now),
                    },
                )
            except httpx.TransportError as err:
                raise TemporarySendError(f"fcm token endpoint: {type(err).__name__}") from err
            if response.status_code != 200:
                # A refused key is our configuration: retried (with backoff) until fixed.
                raise TemporarySendError(
                    f"fcm token endpoint answered {response.status_code}: {response.text[:200]}"
                )
            body = json_body(response)
            token = body.get("access_token")
            if not isinstance(token, str) or not token:
                raise TemporarySendError("fcm token endpoint returned no access_token")
            self._token = token
            self._expires_at = now + float(body.get("expires_in", 3600))
            return token

    def payload(self, message: OutgoingMessage) -> dict[str, Any]:
        data = message.variables.get("data") or {}
        return {
            "message": {
                "token": message.to_address,
                "notification": {"title": message.subject or "", "body": message.text or ""},
                "data": {str(k): str(v) for k, v in data.items()},
            }
        }

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        path = f"/v1/projects/{self._project}/messages:send"
        response = None
        for renew in (False, True):
            token = await self.access_token(renew=renew)
            response = await self._post(
                path,
                json=self.payload(message),
                headers={"Authorization": f"Bearer {token}"},
            )
            if response.status_code != 401:
                break
        assert response is not None
        if response.status_code == 200:
            name = json_body(response).get("name")
            return DeliveryReceipt(self.provider, self._receipt_id(name, "message name"))
        error = json_body(response).get("error")
        error = error if isinstance(error, dict) else {}
        codes = _error_codes(error)
        if "UNREGISTERED" in codes or ("INVALID_ARGUMENT" in codes and _names_token(error)):
            raise InvalidDeviceToken(
                f"fcm: token refused ({', '.join(sorted(codes))}): {error.get('message', '')}"[:255]
            )
        if codes & {"UNAVAILABLE", "INTERNAL", "QUOTA_EXCEEDED"}:
            raise send_error(self.provider, response, permanent=False)
        raise send_error(self.provider, response)


def _error_codes(error: dict[str, Any]) -> set[str]:
    codes = {str(error.get("status", ""))}
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            codes.add(str(detail["errorCode"]))
    codes.discard("")
    return codes


def _names_token(error: dict[str, Any]) -> bool:
    """An INVALID_ARGUMENT is about the token (not our payload) when a field violation names
    `message.token`, or, as FCM often words it, the message says the token is invalid."""
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        for violation in detail.get("fieldViolations") or []:
            if isinstance(violation, dict) and violation.get("field") == "message.token":
                return True
    text = str(error.get("message", "")).lower()
    return "registration token" in text
