"""Command-line entry point: ``molochain-workers COMMAND``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence

from reactor.config import MonitorSettings, describe_settings, load, secret_values
from reactor.errors import ConfigError
from reactor.lifecycle import stop_on_signals
from reactor.logs import setup_logging

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

HEARTBEAT_GRACE = 30.0
"""Seconds added to three check intervals before the monitor counts as stuck."""


async def _run_health_monitor(settings: MonitorSettings) -> int:
    from handlers.channels import build_channels
    from handlers.metrics import MonitorMetrics
    from handlers.notifier import Notifier
    from reactor.monitor import HealthMonitor

    notifier = Notifier(
        build_channels(settings),
        outbox_path=settings.health_log_dir / "outbox.json",
    )
    notifier.start()
    monitor = HealthMonitor(settings)
    metrics = None
    if settings.prometheus_pushgateway:
        metrics = MonitorMetrics(
            settings.prometheus_pushgateway, notifier.stats, lambda: monitor.host
        )
        metrics.start()

    stop_on_signals(monitor.request_stop)

    try:
        await monitor.run()
    finally:
        await notifier.stop(settings.shutdown_timeout)
        if metrics is not None:
            await metrics.stop()
        # Logged last, after the alerts and the final push.
        logger.info("Health monitor stopped", extra={"event": "stopped"})
    return EXIT_OK


def cmd_health_monitor(_args: argparse.Namespace) -> int:
    settings = load(MonitorSettings)
    setup_logging(
        "health-monitor",
        settings.log_level,
        settings.health_log_dir / "health-monitor.log",
        secrets=secret_values(settings),
    )
    return asyncio.run(_run_health_monitor(settings))


def cmd_check(_args: argparse.Namespace) -> int:
    from reactor.checks import run_checks

    settings = load(MonitorSettings)
    print(json.dumps(describe_settings(settings), indent=2, default=str))
    results = asyncio.run(run_checks(settings))
    failed = False
    for name, ok, detail in results:
        print(f"{'ok' if ok else 'FAILED':<6} {name}: {detail}")
        failed = failed or not ok
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_healthcheck(args: argparse.Namespace) -> int:
    if args.worker == "health-monitor":
        settings = load(MonitorSettings)
        path = settings.health_log_dir / "heartbeat"
        limit = 3 * settings.check_interval + HEARTBEAT_GRACE
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            print(
                f"unhealthy: no heartbeat at {path}; the monitor has not reached Docker"
            )
            return EXIT_FAILURE
        if age > limit:
            print(
                f"unhealthy: last heartbeat {age:.0f} s ago, limit {limit:.0f} s "
                f"(3 x CHECK_INTERVAL + {HEARTBEAT_GRACE:g})"
            )
            return EXIT_FAILURE
        print(f"healthy: last heartbeat {age:.0f} s ago")
        return EXIT_OK
    from handlers.backup.commands import healthcheck

    return healthcheck(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molochain-workers",
        description=(
            "Health monitor and PostgreSQL backup workers. "
            "Settings come from environment variables."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    monitor = commands.add_parser(
        "health-monitor", help="watch containers through the Docker events stream"
    )
    monitor.set_defaults(handler=cmd_health_monitor)

    check = commands.add_parser(
        "check",
        help="print the effective settings (secrets masked) and test each connection",
    )
    check.set_defaults(handler=cmd_check)

    health = commands.add_parser(
        "healthcheck",
        help="exit non-zero when a worker is stuck (for Docker HEALTHCHECK)",
    )
    health.add_argument(
        "worker",
        nargs="?",
        default="health-monitor",
        choices=["health-monitor", "backup-worker"],
    )
    health.set_defaults(handler=cmd_healthcheck)

    try:
        from handlers.backup.commands import add_commands
    except ImportError:
        pass
    else:
        add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; exit 2 with one line on invalid settings."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"molochain-workers: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
