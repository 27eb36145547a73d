"""Slack incoming-webhook channel.

Slack accepts about one message per second per webhook and responds with HTTP 429
with ``Retry-After`` (seconds) beyond that; success is HTTP 200 with body
``ok``. Attachments are legacy but still the only way to get the coloured bar.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from handlers.notifier import Channel
from reactor.alerts import Alert, AlertType
from reactor.config import MASK
from reactor.config import url_secrets as _url_secrets
from reactor.errors import DeliveryError

logger = logging.getLogger(__name__)

TEXT_LIMIT = 3000
MAX_ATTACHMENTS = 20
RETRY_AFTER_CAP = 120.0


class SlackRetryableError(Exception):
    """A failure worth another try: 5xx or a transport error."""


class SlackRateLimitedError(SlackRetryableError):
    """HTTP 429; ``retry_after`` is how long Slack asked us to wait."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited, retry after {retry_after:g} s")
        self.retry_after = retry_after


def _clip(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _attachment(alert: Alert) -> dict[str, Any]:
    return {
        "color": alert.type.slack_color,
        "fallback": alert.fallback(),
        "title": _clip(f"{alert.type.emoji} {alert.title}", 300),
        "text": _clip(alert.text),
        "fields": [
            {
                "title": name,
                "value": _clip(value, 1000),
                "short": len(value) <= 40 and "\n" not in value,
            }
            for name, value in alert.fields
        ],
        "footer": f"molochain-workers {alert.worker}",
        "ts": int(alert.time.timestamp()),
    }


def build_payload(alerts: Sequence[Alert]) -> dict[str, Any]:
    """Render alerts as one webhook message: an attachment each, the rest summarised."""
    if len(alerts) == 1:
        return {"text": alerts[0].fallback(), "attachments": [_attachment(alerts[0])]}
    shown = list(alerts[:MAX_ATTACHMENTS])
    attachments = [_attachment(alert) for alert in shown]
    rest = alerts[MAX_ATTACHMENTS:]
    if rest:
        counts = Counter(alert.type for alert in rest)
        worst = max(counts, key=lambda t: list(AlertType).index(t))
        subjects = sorted({alert.subject for alert in rest})
        attachments.append(
            {
                "color": worst.slack_color,
                "fallback": f"{len(rest)} more alerts",
                "title": f"{len(rest)} more alerts",
                "text": _clip(
                    ", ".join(f"{counts[t]} {t.value}" for t in AlertType if counts[t])
                    + "\nAbout: "
                    + ", ".join(subjects)
                ),
            }
        )
    hosts = sorted({alert.host for alert in alerts})
    return {
        "text": f"{len(alerts)} alerts on {', '.join(hosts)}",
        "attachments": attachments,
    }


class SlackChannel(Channel):
    """Post alerts to a Slack incoming webhook within its rate limit, with retries."""

    name = "slack"
    min_interval = 1.0
    max_batch = 100

    def __init__(
        self, webhook_url: str, *, timeout: float = 10.0, max_attempts: int = 6
    ) -> None:
        self._url = webhook_url
        self._max_attempts = max_attempts
        self._client = httpx.AsyncClient(timeout=timeout)
        self._wait = wait_exponential(multiplier=1, min=1, max=30)

    def describe(self) -> str:
        host = httpx.URL(self._url).host
        return f"slack webhook at {host}"

    def _wait_for(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, SlackRateLimitedError):
            return min(error.retry_after, RETRY_AFTER_CAP)
        return float(self._wait(retry_state))

    def _log_retry(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        logger.warning(
            "Slack delivery failed, retrying",
            extra={
                "event": "alert_retry",
                "channel": self.name,
                "attempt": retry_state.attempt_number,
                "retry_in_seconds": retry_state.next_action.sleep
                if retry_state.next_action
                else None,
                "error": str(error),
            },
        )

    async def deliver(self, alerts: Sequence[Alert]) -> None:
        payload = build_payload(alerts)
        # A fresh retry object per call: a shared one would share its statistics.
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(SlackRetryableError),
            wait=self._wait_for,
            stop=stop_after_attempt(self._max_attempts),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._post(payload)
        except SlackRetryableError as exc:
            raise DeliveryError(
                f"Slack webhook failed after {self._max_attempts} attempts: {exc}"
            ) from exc

    async def _post(self, payload: dict[str, Any]) -> None:
        try:
            response = await self._client.post(self._url, json=payload)
        except httpx.TransportError as exc:
            # The exception text can carry the URL; keep only its class.
            raise SlackRetryableError(
                f"{type(exc).__name__} reaching the webhook"
            ) from None
        if response.status_code == 429:
            raise SlackRateLimitedError(
                _retry_after(response.headers.get("Retry-After"))
            )
        if response.status_code >= 500:
            raise SlackRetryableError(f"HTTP {response.status_code}")
        if response.status_code != 200:
            # Slack responds with a short reason such as "no_service"; a proxy's
            # error page may echo the request path, which contains the token.
            reason = response.text[:200]
            for part in _url_secrets(self._url):
                reason = reason.replace(part, MASK)
            raise DeliveryError(
                f"Slack webhook rejected the message: HTTP {response.status_code} "
                f"{reason!r}; check SLACK_WEBHOOK_URL"
            )

    async def aclose(self) -> None:
        await self._client.aclose()


def _retry_after(value: str | None) -> float:
    """Return Slack's Retry-After in seconds; 1 s when it is missing or not a number."""
    if value is None:
        return 1.0
    try:
        seconds = float(value)
    except ValueError:
        # RFC 9110 also allows an HTTP date.
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 1.0
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return 1.0
    return max(seconds, 0.0)
