#!/usr/bin/env bash
# Create .venv and install the project with its test dependencies, and Azurite (the Azure
# Storage emulator the Azure tests run against) into node_modules. Safe to run again: it does
# nothing when pyproject.toml and package-lock.json have not changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.dedup_assets_installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing dedup_assets and its dependencies into .venv (torch included: a few minutes)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import dedup_assets, torch, open_clip, faiss, duckdb" \
  || { rm -f "$stamp"; echo "bootstrap: the environment is broken; run again" >&2; exit 1; }

# Azurite (npm package, pinned in package-lock.json) for the Azure tests.
if [ ! -x node_modules/.bin/azurite-blob ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  if ! command -v npm >/dev/null && [ "${CI:-}" = "true" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing node and npm (apt) for Azurite"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  if command -v npm >/dev/null; then
    echo "installing Azurite into node_modules (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
  else
    echo "bootstrap: npm not found; the Azure tests need node >= 20 and npm (for Azurite)" >&2
  fi
fi
