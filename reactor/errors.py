"""Exceptions shared by every worker."""

from __future__ import annotations


class WorkerError(Exception):
    """Root of the errors this project raises on purpose."""


class ConfigError(WorkerError, ValueError):
    """A setting is missing or invalid; the message names it and the fix."""


class DockerUnavailableError(WorkerError, ConnectionError):
    """The Docker Engine API cannot be reached."""


class DeliveryError(WorkerError):
    """An alert could not be delivered to one channel after all retries."""
