#!/usr/bin/env bash
# Headless Chromium for the review-gallery test (Debian packages chromium, chromium-driver).
# Does nothing when it is there already; needs root (or sudo) to install.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null; then
  SUDO="sudo"
else
  echo "install-chromium: chromium is missing and this user cannot install it;" \
       "run: apt-get install -y chromium chromium-driver" >&2
  exit 1
fi
echo "installing chromium and chromium-driver (for the gallery test)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation fonts-dejavu-core >/dev/null
chromium --version
