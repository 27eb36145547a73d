"""Connection checks for ``molochain-workers check``: nothing is sent."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from reactor.config import MonitorSettings

CheckResult = tuple[str, bool, str]


def _check_docker(settings: MonitorSettings) -> CheckResult:
    import docker

    try:
        client = docker.APIClient(
            base_url=settings.docker_host,
            version="auto",
            timeout=settings.docker_timeout,
        )
        version = client.version()
        client.close()
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none raised
        return (
            "docker",
            False,
            f"{settings.docker_host}: {exc}; check DOCKER_HOST and the socket mount",
        )
    return (
        "docker",
        True,
        f"{settings.docker_host}: Engine {version.get('Version')} "
        f"(API {version.get('ApiVersion')})",
    )


def _check_pushgateway(url: str) -> CheckResult:
    target = url.rstrip("/") + "/-/healthy"
    try:
        with urllib.request.urlopen(target, timeout=5) as response:  # noqa: S310 - URL validated as http(s)
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        return ("pushgateway", False, f"{url}: {exc}; check PROMETHEUS_PUSHGATEWAY")
    return ("pushgateway", status == 200, f"{url}: HTTP {status}")


async def run_checks(settings: MonitorSettings) -> list[CheckResult]:
    """Test Docker, the Pushgateway and the SMTP greeting as configured."""
    results = [await asyncio.to_thread(_check_docker, settings)]
    if settings.prometheus_pushgateway:
        results.append(
            await asyncio.to_thread(_check_pushgateway, settings.prometheus_pushgateway)
        )
    else:
        results.append(("pushgateway", True, "not configured"))
    if settings.email_enabled:
        from handlers.email import EmailChannel

        channel = EmailChannel(settings)
        try:
            greeting = await channel.greet()
            results.append(("smtp", True, f"{channel.host}:{channel.port}: {greeting}"))
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none raised
            results.append(
                (
                    "smtp",
                    False,
                    f"{channel.host}:{channel.port}: {exc}; "
                    "check SMTP_HOST and SMTP_PORT",
                )
            )
    else:
        results.append(("smtp", True, "not configured"))
    if settings.slack_webhook_url:
        results.append(
            (
                "slack",
                True,
                "configured; not tested, because testing would post a message",
            )
        )
    else:
        results.append(("slack", True, "not configured"))
    return results
