"""Addresses of the shared test services that scripts/test-env.sh starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV_FILE = Path(os.environ.get("MOLO_TEST_ROOT", "/tmp/molochain-test")) / "env"


def _load_env_file() -> dict[str, str]:
    try:
        lines = ENV_FILE.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split("=", 1) for line in lines if "=" in line)


_SERVICES = _load_env_file()


def required_env(name: str) -> str:
    value = os.environ.get(name) or _SERVICES.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set; run scripts/test-env.sh once, "
            "or the tests through scripts/test.sh"
        )
    return value
