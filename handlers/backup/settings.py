"""Settings of the backup worker, read once through :func:`reactor.config.load`."""

from __future__ import annotations

import socket
from datetime import datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from handlers.backup.schedule import LocalCronTrigger
from reactor.config import Bool, CommaList, CommonSettings, secret


class BackupFileSettings(CommonSettings):
    """Settings of the backup worker that need no database password.

    The healthcheck reads only ``BACKUP_DIR`` and the schedule, so it loads
    these and starts without PGPASSWORD.
    """

    backup_databases: CommaList = Field(
        default_factory=list,
        description="comma-separated database names; empty dumps every database "
        "PGUSER can connect to except templates",
    )
    backup_globals: Bool = Field(
        True, description="true or false: dump roles with pg_dumpall --globals-only"
    )
    backup_schedule: str = Field(
        "0 2 * * *",
        description="a five-field cron expression such as '0 2 * * *'",
    )
    tz: str = Field("UTC", description="an IANA time zone such as Europe/Berlin")
    backup_misfire_grace: float = Field(
        3600.0,
        ge=0,
        description="a number of seconds of at least 0 within which a missed run "
        "still runs",
    )
    backup_healthcheck_grace: float = Field(
        6 * 3600.0,
        gt=0,
        description="a number of seconds above 0 a scheduled backup may take before "
        "the healthcheck fails",
    )
    backup_dir: Path = Field(Path("/backups"), description="a writable directory path")
    backup_format: Literal["custom", "plain"] = Field(
        "custom", description="custom or plain"
    )
    backup_compression_level: int = Field(
        9, ge=0, le=9, description="a whole number from 0 (none) to 9 (smallest)"
    )
    backup_retention_days: int = Field(
        30, ge=1, description="a whole number of days of at least 1"
    )
    backup_weekly_retention: int = Field(
        8, ge=0, description="a whole number of weeks; 0 keeps no weekly snapshots"
    )
    backup_monthly_retention: int = Field(
        6, ge=0, description="a whole number of months; 0 keeps no monthly snapshots"
    )
    backup_keep_min: int = Field(
        3,
        ge=1,
        description="a whole number of at least 1 backups per database that "
        "retention always keeps",
    )
    backup_notify_success: Bool = Field(True, description="true or false")

    @field_validator("backup_schedule")
    @classmethod
    def _check_schedule(cls, value: str) -> str:
        # APScheduler's messages are one line and name the bad field.
        LocalCronTrigger.from_crontab(value)
        return value

    @field_validator("tz")
    @classmethod
    def _check_tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("unknown time zone") from exc
        return value

    @property
    def zone(self) -> ZoneInfo:
        """The time zone of the schedule and of the weekly and monthly snapshots."""
        return ZoneInfo(self.tz)

    def trigger(self) -> LocalCronTrigger:
        """Build the cron trigger of the backup schedule."""
        trigger: LocalCronTrigger = LocalCronTrigger.from_crontab(
            self.backup_schedule, timezone=self.zone
        )
        return trigger

    @property
    def instance(self) -> str:
        """The Pushgateway ``instance`` label and the host named in alerts."""
        return self.instance_name or socket.gethostname()

    def local_time(self, moment: datetime) -> datetime:
        """Convert an aware time to the schedule's time zone."""
        return moment.astimezone(self.zone)


class BackupSettings(BackupFileSettings):
    """Settings of the backup worker: what to dump, when, where and for how long."""

    pghost: str = Field(
        "molochain-postgres", description="a PostgreSQL host name or socket directory"
    )
    pgport: int = Field(5432, ge=1, le=65535, description="a TCP port, e.g. 5432")
    pguser: str = Field("molochain", min_length=1, description="a PostgreSQL role")
    pgpassword: str | None = secret(description="the password of PGUSER")

    @model_validator(mode="after")
    def _check_password(self) -> BackupSettings:
        if not self.pgpassword:
            raise ValueError(
                "PGPASSWORD: missing; set PGPASSWORD or PGPASSWORD_FILE to the "
                "password of PGUSER"
            )
        return self

    @property
    def password(self) -> str:
        """PGPASSWORD, which the validator guarantees is set."""
        return self.pgpassword or ""
