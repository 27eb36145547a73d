"""Errors of the backup worker."""

from __future__ import annotations

from reactor.errors import WorkerError


class BackupError(WorkerError):
    """A backup step failed; ``stderr`` contains the last lines the program wrote."""

    def __init__(self, step: str, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        self.stderr = stderr
