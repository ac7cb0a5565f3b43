#!/usr/bin/env bash
# Installs what the browser suite needs, once: playwright-core (the exact
# version in package-lock.json) and Debian's Chromium. Run by the first
# browser test (tests/browser/main.rs) and by .ci/run. Exits non-zero, with
# the reason, when it cannot: the browser tests then fail (they never skip).
set -euo pipefail
cd "$(dirname "$0")"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

command -v node >/dev/null || { echo "setup.sh: node is required (Node.js 20 or newer)" >&2; exit 1; }
command -v npm >/dev/null || { echo "setup.sh: npm is required" >&2; exit 1; }

if [ ! -f node_modules/playwright-core/package.json ]; then
  echo "setup.sh: npm ci (playwright-core)"
  npm ci --no-audit --no-fund --loglevel=error
fi

chromium_bin=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium_bin" ]; then
  echo "setup.sh: $chromium_bin is missing: installing Debian's chromium and chromium-driver"
  if [ "$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then
    echo "setup.sh: installing Chromium needs root (or sudo without a password); install the packages chromium and chromium-driver, or set CHROMIUM to a Chromium binary" >&2
    exit 1
  fi
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
  [ -x "$chromium_bin" ] || { echo "setup.sh: $chromium_bin is still missing after installing chromium" >&2; exit 1; }
fi
"$chromium_bin" --version
