"""JSON-lines logging for the workers, on stdout and in a size-rotated file."""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

from reactor.config import MASK
from reactor.errors import ConfigError

LOG_FILE_MAX_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5
SHORT_SECRET = 6
"""Secrets shorter than this are masked only as whole string values."""

# Libraries whose INFO lines would print request URLs, and the Slack webhook
# URL is itself the secret.
_QUIET_LOGGERS = ("httpx", "httpcore", "urllib3", "docker", "apscheduler.executors")


class _WorkerFilter(logging.Filter):
    """Stamp every record with the worker's name, so one Loki label separates them."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


class _RotatingFile(logging.handlers.RotatingFileHandler):
    """Rotating log file that reports its own write failures as one JSON line.

    The standard handler prints a traceback to stderr on every failed record,
    which on a full disk buries the worker's own output.
    """

    REPORT_INTERVAL = 60.0

    _last_report = -REPORT_INTERVAL

    def handleError(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        if now - self._last_report < self.REPORT_INTERVAL:
            return
        self._last_report = now
        error = sys.exc_info()[1]
        line = {
            "level": "ERROR",
            "logger": __name__,
            "message": "Writing the log file failed; further failures are "
            f"reported at most every {self.REPORT_INTERVAL:g} s",
            "event": "log_write_failed",
            "path": self.baseFilename,
            "error": str(error),
        }
        sys.stderr.write(json.dumps(line) + "\n")


class MaskingJsonFormatter(JsonFormatter):
    """JSON formatter that replaces every known secret with ``***``.

    Masking the finished line catches a secret wherever it got in: the
    message, an exception's text or a field.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            timestamp="time",
            rename_fields={"levelname": "level", "name": "logger"},
        )
        words: set[str] = set()
        whole_values: set[str] = set()
        for value in secrets:
            encoded = json.dumps(value)[1:-1]
            if len(value) >= SHORT_SECRET:
                words.update({value, encoded})
            elif value:
                whole_values.add(encoded)
        # Longest first, so a secret that contains another is masked whole.
        # A secret is masked only where it is not part of a longer word, so
        # "fix" leaves "prefix" readable; a secret shorter than SHORT_SECRET
        # is masked only as a whole JSON string, because as a word it would
        # also hit database names and messages and so reveal itself.
        patterns = []
        if words:
            alternatives = "|".join(
                re.escape(v) for v in sorted(words, key=len, reverse=True)
            )
            patterns.append(f"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")
        if whole_values:
            alternatives = "|".join(
                re.escape(v) for v in sorted(whole_values, key=len, reverse=True)
            )
            patterns.append(f'(?<=")(?:{alternatives})(?=")')
        self._pattern = re.compile("|".join(patterns)) if patterns else None

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if self._pattern is None:
            return line
        return self._pattern.sub(MASK, line)


def setup_logging(
    worker: str,
    level: str,
    log_file: Path | None,
    secrets: Iterable[str] = (),
) -> None:
    """Send every record as one JSON line to stdout and, if given, to ``log_file``."""
    formatter = MaskingJsonFormatter(secrets)
    worker_filter = _WorkerFilter(worker)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(
                _RotatingFile(
                    log_file,
                    maxBytes=LOG_FILE_MAX_BYTES,
                    backupCount=LOG_FILE_BACKUPS,
                    encoding="utf-8",
                )
            )
        except OSError as exc:
            raise ConfigError(
                f"log file {str(log_file)!r} cannot be opened ({exc.strerror}); "
                "mount a writable volume there or point the log directory elsewhere"
            ) from exc

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(worker_filter)
        root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
