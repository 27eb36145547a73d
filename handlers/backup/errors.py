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


class SymlinkError(BackupError):
    """A path under BACKUP_DIR that the worker creates itself is a symbolic link.

    The worker writes, changes the mode of and deletes files through these
    paths, so following a planted link would act on files outside BACKUP_DIR.
    """

    def __init__(self, path: str, what: str = "directory") -> None:
        super().__init__(
            "directory_check",
            f"{path} is a symbolic link, and the backup worker follows no links "
            f"under BACKUP_DIR; move the link away so the worker creates its own "
            f"{what} there",
        )
        self.path = path
