#!/bin/sh
# Install the system packages `make run` or `make test` needs, when they are missing.
#
#   scripts/system-deps.sh run    podman + runc (container jobs)
#   scripts/system-deps.sh test   also busybox-static (the test image), chromium (browser tests),
#                                 gcc + libc6-dev (the loopback shim's tests compile it),
#                                 prometheus (promtool checks the alert rules and dashboard queries)
#
# Installs only on a Debian-like host as root (apt-get). Anywhere else it prints what is missing
# and which tests will be skipped for it, and exits 0: the suite still runs, with the reason on
# every skip. DRY_RUN=1 prints what it would install instead of installing it.
set -u

case "${1:-}" in
  run) wanted="podman runc" ;;
  test) wanted="podman runc busybox-static chromium gcc libc6-dev prometheus" ;;
  *) echo "usage: $0 run|test" >&2; exit 2 ;;
esac

# present PACKAGE: the package's program is on this machine (whatever installed it)
present() {
  case "$1" in
    busybox-static) [ -x "${BUSYBOX:-/bin/busybox}" ] ;;
    chromium) command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 ;;
    libc6-dev) [ -e /usr/include/stdio.h ] ;;
    prometheus) command -v promtool >/dev/null 2>&1 ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

why() {
  case "$1" in
    podman|runc) echo "container jobs and the container tests" ;;
    busybox-static) echo "the container tests (their image is built from it)" ;;
    chromium) echo "the dashboard and /docs browser tests" ;;
    gcc|libc6-dev) echo "the loopback shim's tests (they compile it)" ;;
    prometheus) echo "the promtool checks of the alert rules and dashboard queries" ;;
  esac
}

missing=""
for p in $wanted; do present "$p" || missing="$missing $p"; done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if [ "${DRY_RUN:-}" = 1 ]; then
    echo "would install:$missing"
    exit 0
  fi
  echo "installing:$missing"
  if apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing; then
    exit 0
  fi
  echo "note: apt-get could not install:$missing"
fi
for p in $missing; do
  echo "note: $p is missing (as root on Debian: apt-get install $p); without it: $(why "$p") are skipped"
done
exit 0
