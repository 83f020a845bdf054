#!/usr/bin/env bash
# Runs the whole system with demo data: PostgreSQL (in var/pgdata unless DATABASE_URL is
# set), hsm_stub on 127.0.0.1:9510, cardsvc on 127.0.0.1:8080. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m cardsvc.devenv.demo "$@"
