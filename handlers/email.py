"""Email channel through aiosmtplib."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from handlers.notifier import Channel
from reactor.alerts import Alert, AlertType
from reactor.config import CommonSettings
from reactor.errors import ConfigError, DeliveryError

logger = logging.getLogger(__name__)


def _is_transient(error: BaseException) -> bool:
    """Connection problems and 4xx replies are worth another try; 5xx are final."""
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return 400 <= error.code < 500
    return isinstance(
        error,
        aiosmtplib.SMTPConnectError
        | aiosmtplib.SMTPServerDisconnected
        | aiosmtplib.SMTPTimeoutError
        | OSError,
    )


def build_message(
    alerts: Sequence[Alert], sender: str, recipients: Sequence[str]
) -> EmailMessage:
    """Render alerts as one plain-text email."""
    worst = max(
        (alert.type for alert in alerts), key=lambda t: list(AlertType).index(t)
    )
    first = alerts[0]
    subject = f"[{worst.value.upper()}] {first.title}"
    if len(alerts) > 1:
        subject += f" (and {len(alerts) - 1} more)"

    sections = []
    for alert in alerts:
        lines = [f"[{alert.type.value.upper()}] {alert.title}", alert.text, ""]
        width = max((len(name) for name, _ in alert.fields), default=0)
        for name, value in alert.fields:
            lines.append(f"{name.ljust(width)}  {value}")
        sections.append("\n".join(lines))

    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message["X-Alert-Type"] = worst.value
    message.set_content(
        "\n\n".join(sections)
        + f"\n\n-- \nmolochain-workers {first.worker} on {first.host}\n"
    )
    return message


class EmailChannel(Channel):
    """Send alerts by SMTP, retrying transient failures."""

    name = "email"
    max_batch = 50

    def __init__(self, settings: CommonSettings, *, max_attempts: int = 4) -> None:
        if not settings.smtp_host:
            raise ConfigError("SMTP_HOST is missing; set it to enable email alerts")
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.username = settings.smtp_username
        self.password = settings.smtp_password
        self.use_tls = settings.smtp_ssl
        self.start_tls = settings.smtp_starttls and not settings.smtp_ssl
        self.timeout = settings.smtp_timeout
        self.sender = settings.smtp_from or f"molochain-workers@{self.host}"
        self.recipients = list(settings.alert_email_to)
        self._max_attempts = max_attempts

    def describe(self) -> str:
        return f"email via {self.host}:{self.port} to {', '.join(self.recipients)}"

    def _log_retry(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        logger.warning(
            "Email delivery failed, retrying",
            extra={
                "event": "alert_retry",
                "channel": self.name,
                "attempt": retry_state.attempt_number,
                "smtp_host": self.host,
                "error": str(error),
            },
        )

    async def deliver(self, alerts: Sequence[Alert]) -> None:
        message = build_message(alerts, self.sender, self.recipients)
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_transient),
            wait=wait_exponential(multiplier=1, min=1, max=30),
            stop=stop_after_attempt(self._max_attempts),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self.send(message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(
                f"SMTP delivery to {self.host}:{self.port} failed: {exc}"
            ) from exc

    async def send(self, message: EmailMessage) -> None:
        await aiosmtplib.send(
            message,
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.use_tls,
            start_tls=self.start_tls,
            timeout=self.timeout,
        )

    async def greet(self) -> str:
        """Connect, read the greeting and send EHLO, without sending a message."""
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.use_tls,
            start_tls=self.start_tls,
            timeout=self.timeout,
        )
        response = await client.connect()
        try:
            if self.username and self.password:
                await client.login(self.username, self.password)
        finally:
            await client.quit()
        return f"{response.code} {response.message}"
