"""Email over SMTP (any relay: a local MTA, Amazon SES, Mailgun's or Postmark's SMTP, ...).

Each send opens one connection (plain, STARTTLS or implicit TLS, as SMTP_SECURITY says),
authenticates when SMTP_USERNAME is set, and hands over one message. SMTP has no idempotency
key and no way to ask a relay what it took, so the Message-ID is derived from our message id: a
send that is tried again carries the same Message-ID, and a relay or a mailbox that dedupes on it
drops the second copy. Whether a send cut short during the call (worker killed after the relay
took the message, before we recorded it) is tried again at all is UNCERTAIN_SENDS' choice:
`unknown` (the default: recorded as unknown, never sent twice) or `resend`. The same id is in
`X-Nurture-Message-Id`, which bounce reports (DSNs) quote, so a bounce maps back to the message.

A 5xx reply (to MAIL, RCPT or DATA) is the server's final word: `PermanentSendError`. A 4xx
reply, a timeout or a lost connection is temporary: `TemporarySendError`, and Temporal retries.
"""

import ssl
from email.message import EmailMessage
from email.utils import parseaddr

import aiosmtplib

from nurture.channels.base import (
    DeliveryReceipt,
    OutgoingMessage,
    PermanentSendError,
    TemporarySendError,
)
from nurture.settings import Settings

_CREDENTIAL_REPLIES = frozenset({530, 534, 535})


class SmtpChannel:
    provider = "smtp"

    def __init__(self, settings: Settings, *, tls_context: ssl.SSLContext | None = None) -> None:
        """`tls_context` replaces the system's trust store, e.g. for a relay with a private CA."""
        self._settings = settings
        self._tls_context = tls_context
        from_address = parseaddr(settings.email_from)[1]
        # The Message-ID's right-hand side is our sending domain, as RFC 5322 suggests.
        self._domain = from_address.rpartition("@")[2] or "nurture.invalid"

    def message_id_header(self, message: OutgoingMessage) -> str:
        return f"<{message.message_id}@{self._domain}>"

    def build(self, message: OutgoingMessage) -> EmailMessage:
        """The MIME message: text and HTML as multipart/alternative when both are given."""
        email = EmailMessage()
        email["From"] = self._settings.email_from
        email["To"] = message.to_address
        if message.subject is not None:
            email["Subject"] = message.subject
        if self._settings.email_reply_to:
            email["Reply-To"] = self._settings.email_reply_to
        email["Message-ID"] = self.message_id_header(message)
        email["X-Nurture-Message-Id"] = str(message.message_id)
        for name, value in message.headers.items():
            del email[name]  # a rendered header replaces ours rather than doubling it
            email[name] = value
        if message.text is not None:
            email.set_content(message.text)
            if message.html is not None:
                email.add_alternative(message.html, subtype="html")
        elif message.html is not None:
            email.set_content(message.html, subtype="html")
        else:
            email.set_content("")
        return email

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        settings = self._settings
        try:
            email = self.build(message)
        except ValueError as err:  # e.g. a header value with a line break: no retry fixes it
            raise PermanentSendError(f"smtp: cannot build the message: {err}") from err
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        try:
            await aiosmtplib.send(
                email,
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username or None,
                password=password if settings.smtp_username else None,
                use_tls=settings.smtp_security == "tls",
                # False, not None, for "none": aiosmtplib would otherwise upgrade whenever the
                # server offers STARTTLS, and fail on a relay with an untrusted certificate.
                start_tls=settings.smtp_security == "starttls",
                tls_context=self._tls_context,
                timeout=settings.provider_timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as err:
            # Our only recipient was refused; its reply code says whether for good.
            codes = [refusal.code for refusal in err.recipients]
            detail = "; ".join(f"{r.code} {r.message}" for r in err.recipients)
            if codes and all(code >= 500 for code in codes):
                raise PermanentSendError(f"smtp: recipient refused: {detail}") from err
            raise TemporarySendError(f"smtp: recipient deferred: {detail}") from err
        except aiosmtplib.SMTPResponseException as err:
            # 530/534/535: our login was refused, a configuration problem someone will fix;
            # messages wait for it rather than all failing for good.
            permanent = err.code >= 500 and err.code not in _CREDENTIAL_REPLIES
            error_class = PermanentSendError if permanent else TemporarySendError
            raise error_class(f"smtp: {err.code} {err.message}") from err
        except (aiosmtplib.SMTPException, OSError) as err:
            # No reply to judge by: connection refused or lost, timeout, TLS failure, or a
            # server lacking STARTTLS/AUTH (a configuration problem someone will fix).
            # A timeout or a lost connection once connected may have come after the server
            # took the message (its "250" never reached us): the retry must not assume not.
            maybe = isinstance(
                err, (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError)
            ) and not isinstance(err, (aiosmtplib.SMTPConnectError, ConnectionRefusedError))
            raise TemporarySendError(
                f"smtp: {type(err).__name__}: {err}", maybe_accepted=maybe
            ) from err
        return DeliveryReceipt(
            provider=self.provider,
            provider_message_id=self.message_id_header(message).strip("<>"),
        )
