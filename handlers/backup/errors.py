"""Errors of the backup worker."""

from __future__ import annotations

from reactor.errors import WorkerError


class BackupError(WorkerError):
    """A backup step failed; ``stderr`` holds the last lines the program wrote."""

    def __init__(self, step: str, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        self.stderr = stderr


class RunInProgressError(WorkerError):
    """Another backup run holds the lock in BACKUP_DIR."""
