#!/usr/bin/env bash
# Create .venv (Python 3.11) and install spnas with its pinned working set, once.
# Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${SPNAS_PYTHON:-}"
if [[ -z "$PY" ]]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$candidate"; break
    fi
  done
fi
if [[ -z "$PY" ]]; then
  echo "error: spnas needs Python 3.11 (torch 2.14.1 / torchvision 0.29.1 wheels); set SPNAS_PYTHON" >&2
  exit 2
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "creating .venv with $PY"
  "$PY" -m venv .venv
fi

stamp=.venv/.spnas-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "installing spnas and its dependencies into .venv (first time: several minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test]'
  echo "$want" > "$stamp"
fi
