#!/usr/bin/env bash
# README command 1: install if needed, bring up Prefect server + worker + MLflow server
# (or reuse them), deploy every pipeline, run the main job spnas/full and watch it.
# Extra arguments go to `spnas demo`, e.g. --deployment lcnet/full or --set fully_train.epochs=8.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/spnas demo "$@"
