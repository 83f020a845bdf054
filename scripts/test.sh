#!/usr/bin/env bash
# Runs every check: lint, format, types, then all tests (unit, integration against a real
# PostgreSQL and hsm_stub started by the tests, interop). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
