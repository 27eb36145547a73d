"""The long-running backup worker: APScheduler runs :class:`BackupJob` on a schedule.

The last scheduled fire time is saved in ``schedule.json``. A restarted worker
compares it with the schedule: a run missed while it was down is reported, and
runs once at start when it is within BACKUP_MISFIRE_GRACE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from handlers.backup.job import WORKER, BackupJob
from handlers.backup.schedule import Missed, find_missed
from handlers.backup.settings import BackupSettings
from handlers.backup.status import ScheduleStore, StatusStore
from reactor import signals
from reactor.alerts import Alert, AlertType
from reactor.lifecycle import stop_on_signals

logger = logging.getLogger(__name__)

JOB_ID = "backup"


class BackupWorker:
    """Schedule backups until :meth:`request_stop`, then abandon a run cleanly."""

    def __init__(
        self,
        settings: BackupSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.job = BackupJob(settings, clock)
        self.schedule_store = ScheduleStore(self.job.layout.schedule_path)
        self.trigger = settings.trigger()
        self.scheduler = AsyncIOScheduler(
            timezone=settings.zone,
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": max(1, int(settings.backup_misfire_grace)),
            },
        )
        self._stop = asyncio.Event()
        self._running: asyncio.Task[object] | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Start the scheduler, wait for a stop request, then shut down."""
        layout = self.job.layout
        layout.ensure_dir(layout.root)
        now = self.clock()
        missed = self._check_missed(now)

        self.scheduler.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)
        self.scheduler.add_listener(self._on_max_instances, EVENT_JOB_MAX_INSTANCES)
        self.scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        options: dict[str, object] = {}
        if missed is not None and missed.catch_up:
            options["next_run_time"] = now
        self.scheduler.add_job(
            self._scheduled_run, self.trigger, id=JOB_ID, name="backup", **options
        )
        self.scheduler.start()
        logger.info(
            "Backup worker started",
            extra={
                "event": "worker_started",
                "schedule": self.settings.backup_schedule,
                "timezone": self.settings.tz,
                "backup_dir": str(layout.root),
            },
        )
        self._log_next_run()

        await self._stop.wait()
        self.scheduler.shutdown(wait=False)
        running = self._running
        if running is not None and not running.done():
            logger.warning(
                "Stopping during a backup run; abandoning it",
                extra={"event": "run_abandoned"},
            )
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        logger.info("Backup worker stopped", extra={"event": "worker_stopped"})

    async def _scheduled_run(self) -> None:
        task = asyncio.current_task()
        self._running = task
        try:
            await self.job.run()
        finally:
            self._running = None
            if not self._stop.is_set():
                self._log_next_run()

    def _log_next_run(self) -> None:
        job = self.scheduler.get_job(JOB_ID)
        next_run = job.next_run_time if job is not None else None
        logger.info(
            "Next backup at %s",
            next_run.isoformat() if next_run else "never",
            extra={
                "event": "next_run",
                "next_run_time": next_run.isoformat() if next_run else None,
            },
        )

    def _check_missed(self, now: datetime) -> Missed | None:
        state = self.schedule_store.load()
        grace = timedelta(seconds=self.settings.backup_misfire_grace)
        missed = find_missed(self.trigger, state.last_fire, now, grace)
        if state.first_start is None:
            state.first_start = now
        # Every fire time up to now is dealt with from here: caught up below,
        # or reported as missed, so a second restart does not report it again.
        state.last_fire = now
        self.schedule_store.save(state)
        if missed is not None:
            self._report_missed(missed)
        return missed

    def _report_missed(self, missed: Missed) -> None:
        latest = missed.latest.isoformat()
        if missed.catch_up:
            text = (
                f"{missed.count} scheduled backup(s) passed while the worker was "
                f"not running, the latest at {latest}; running one now."
            )
        else:
            text = (
                f"{missed.count} scheduled backup(s) passed while the worker was "
                f"not running, the latest at {latest}, more than "
                f"BACKUP_MISFIRE_GRACE={self.settings.backup_misfire_grace:g} s ago; "
                "the next one runs on schedule. Run 'molochain-workers backup now' "
                "for a backup today."
            )
        logger.warning(
            "Scheduled backup missed",
            extra={
                "event": "run_missed",
                "missed": missed.count,
                "latest": latest,
                "catch_up": missed.catch_up,
            },
        )
        signals.publish(
            signals.alert_raised,
            self,
            alert=Alert(
                type=AlertType.WARNING if missed.catch_up else AlertType.ERROR,
                title="Scheduled backup missed",
                text=text,
                worker=WORKER,
                host=self.settings.instance,
                subject="schedule",
                fields=(
                    ("missed runs", str(missed.count)),
                    ("latest", latest),
                    ("caught up", "yes" if missed.catch_up else "no"),
                ),
                kind="backup_missed",
            ),
        )

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        if not event.scheduled_run_times:
            return
        state = self.schedule_store.load()
        fired = max(event.scheduled_run_times)
        if state.last_fire is None or fired > state.last_fire:
            state.last_fire = fired
            try:
                self.schedule_store.save(state)
            except OSError as exc:
                logger.error(
                    "Could not record the fire time",
                    extra={"event": "schedule_write_failed", "error": str(exc)},
                )

    def _on_max_instances(self, _event: JobSubmissionEvent) -> None:
        logger.warning(
            "Scheduled backup skipped: the previous run is still in progress",
            extra={"event": "run_skipped"},
        )

    def _on_missed(self, event: JobExecutionEvent) -> None:
        logger.warning(
            "Scheduled backup missed: the worker was busy past BACKUP_MISFIRE_GRACE",
            extra={
                "event": "run_missed",
                "scheduled_run_time": event.scheduled_run_time.isoformat(),
            },
        )


@contextlib.asynccontextmanager
async def reporting(
    settings: BackupSettings, store: StatusStore, *, one_off: bool = False
) -> AsyncIterator[None]:
    """Deliver alerts and push metrics while the block runs; flush them at its end."""
    from handlers.backup.metrics import BackupMetrics
    from handlers.channels import build_channels
    from handlers.notifier import Notifier

    # Only the long-running worker keeps undelivered alerts for its next
    # start: a one-off command and the worker would otherwise share the file.
    outbox = None if one_off else settings.backup_dir / "outbox.json"
    notifier = Notifier(build_channels(settings), outbox_path=outbox)
    notifier.start()
    metrics = None
    if settings.prometheus_pushgateway:
        metrics = BackupMetrics(
            settings.prometheus_pushgateway,
            store,
            notifier.stats,
            settings.instance,
            one_off=one_off,
        )
        metrics.start()
    try:
        yield
    finally:
        await notifier.stop(settings.shutdown_timeout)
        if metrics is not None:
            await metrics.stop()


async def run_worker(settings: BackupSettings) -> int:
    """Run the backup worker until SIGTERM or SIGINT."""
    worker = BackupWorker(settings)
    stop_on_signals(worker.request_stop)
    async with reporting(settings, worker.job.status_store):
        await worker.run()
    return 0
