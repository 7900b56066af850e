#!/usr/bin/env bash
# README command 2: install if needed, then run every test, the slow end-to-end ones included
# (real Prefect server + worker, real MLflow server, real training, ONNX Runtime, PostgreSQL,
# headless Chromium; scripts/system_deps.sh installs the last two from Debian's packages).
# Arguments go to pytest, e.g. scripts/test.sh -m "not slow" for the fast ones only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system_deps.sh
exec .venv/bin/python -m pytest "$@"
