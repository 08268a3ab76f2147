#!/usr/bin/env bash
# Installs the Debian packages gpumix's tests and demo drive for real, only where they are missing.
# chromium: the browser tests (Playwright drives Debian's chromium; nothing is downloaded by Playwright).
set -euo pipefail
need=()
for pair in redis-server:redis-server caddy:caddy nginx:nginx cmake:cmake g++:g++ chromium:chromium; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts packaged servers on install; the tests start their own on free loopback ports.
for svc in redis-server nginx caddy; do
  $SUDO systemctl stop "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
