#!/usr/bin/env bash
# CI (as root, on a fresh Debian machine): what the browser tests of tests/integration/web need.
# Idempotent: Chromium is installed only when missing; npm ci reinstalls exactly the lockfile.
set -euo pipefail
cd "$(dirname "$0")"

CHROMIUM=/usr/bin/chromium

if [ ! -x "$CHROMIUM" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q chromium
fi
command -v npm >/dev/null || { echo "web/ci-setup.sh: npm not found; install Node.js 20+" >&2; exit 1; }
npm ci --no-audit --no-fund
npm run build
