#!/usr/bin/env bash
# Start what the tests need (services are started by the test fixtures
# themselves where possible), then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1
# libvirtd for the libvirt launcher tests (no systemd here); Postfix and the
# sandboxes are started by the test fixtures themselves
bash scripts/start-libvirtd.sh || echo "test.sh: libvirtd could not start; the libvirt tests will say why they skip" >&2
exec .venv/bin/python -m pytest --durations=25 "$@"
