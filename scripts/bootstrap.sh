#!/usr/bin/env bash
# Create .venv and install the project with its test dependencies. Safe to run again:
# it does nothing when pyproject.toml has not changed since the last install.
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
