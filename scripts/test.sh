#!/usr/bin/env bash
# Set up every real component the tests use, then run the linters, the type
# checker and the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/test-env.sh

.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/pytest "$@"
