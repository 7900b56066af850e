#!/usr/bin/env bash
# What the slow tests need from Debian's packages, installed once (README command 2 runs this):
#   chromium    - the browser tests load the Prefect and MLflow UIs headless (--dump-dom)
#   postgresql  - `spnas up --db postgres` and its test start a server under the state folder
# Skips what is already there; SPNAS_SKIP_SYSTEM_DEPS=1 skips the step entirely.
set -euo pipefail

[[ "${SPNAS_SKIP_SYSTEM_DEPS:-}" == "1" ]] && exit 0

want=()
command -v chromium >/dev/null 2>&1 || want+=(chromium)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  want+=(postgresql)
fi
[[ ${#want[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: no apt-get; install ${want[*]} yourself (the browser/PostgreSQL tests need them)" >&2
  exit 0
fi
sudo=()
[[ "$(id -u)" -ne 0 ]] && sudo=(sudo)
echo "installing Debian packages: ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get install -y --no-install-recommends "${want[@]}" >/dev/null \
  || { "${sudo[@]}" apt-get update >/dev/null && "${sudo[@]}" apt-get install -y --no-install-recommends "${want[@]}" >/dev/null; }
