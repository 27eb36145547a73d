"""Build the alert channels the settings enable."""

from __future__ import annotations

import logging

from handlers.email import EmailChannel
from handlers.notifier import Channel
from handlers.slack import SlackChannel
from reactor.config import CommonSettings

logger = logging.getLogger(__name__)


def build_channels(settings: CommonSettings) -> list[Channel]:
    """Return a channel for Slack and for email when each is configured."""
    channels: list[Channel] = []
    if settings.slack_webhook_url:
        channels.append(SlackChannel(settings.slack_webhook_url))
    if settings.email_enabled:
        channels.append(EmailChannel(settings))
    if not channels:
        logger.warning(
            "No alert channel configured; alerts are only logged",
            extra={"event": "no_channels", "fix": "set SLACK_WEBHOOK_URL or SMTP_HOST"},
        )
    for channel in channels:
        logger.info(
            "Alert channel enabled",
            extra={"event": "channel_enabled", "channel": channel.describe()},
        )
    return channels
