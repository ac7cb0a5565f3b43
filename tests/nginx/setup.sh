#!/usr/bin/env bash
# Installs Debian's nginx for the reverse-proxy tests (tests/api/proxy.rs),
# once. Run by the first of those tests and by .ci/run. The tests run it on
# loopback themselves, from a configuration they write into a temporary
# directory; the package's own service is never started. Exits non-zero,
# with the reason, when it cannot: the proxy tests then fail (they never
# skip).
set -euo pipefail

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

nginx_bin=${NGINX:-/usr/sbin/nginx}
if [ ! -x "$nginx_bin" ]; then
  echo "setup.sh: $nginx_bin is missing: installing Debian's nginx"
  if [ "$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then
    echo "setup.sh: installing nginx needs root (or sudo without a password); install the package nginx, or set NGINX to an nginx binary" >&2
    exit 1
  fi
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx
  [ -x "$nginx_bin" ] || { echo "setup.sh: $nginx_bin is still missing after installing nginx" >&2; exit 1; }
fi
"$nginx_bin" -v
