#!/usr/bin/env bash
# Start what the tests need (services are started by the test fixtures
# themselves where possible), then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1
exec .venv/bin/python -m pytest "$@"
