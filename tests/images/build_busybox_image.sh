#!/bin/sh
# Build the test image localhost/busybox:test from the busybox-static binary, without a registry.
#
# Idempotent: does nothing when the image already exists. Needs podman and Debian's
# busybox-static (/bin/busybox). CONTAINERS_CONF defaults to tests/containers.conf (runc,
# no default ulimits), which these machines need.
set -eu
IMAGE="${1:-localhost/busybox:test}"
HERE="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/../containers.conf}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

if podman image exists "$IMAGE"; then
    echo "$IMAGE already present"
    exit 0
fi
if ! "$BUSYBOX" --list 2>/dev/null | grep -qx sh; then
    echo "need a static busybox at $BUSYBOX (apt-get install busybox-static)" >&2
    exit 2
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/root/bin" "$WORK/root/tmp" "$WORK/root/etc"
cp "$BUSYBOX" "$WORK/root/bin/busybox"
# Applet links so that `sh`, `echo`, `sleep`... resolve on PATH inside the container.
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$WORK/root/bin/$applet"
done
chmod 1777 "$WORK/root/tmp"
tar -cf "$WORK/img.tar" -C "$WORK/root" .
podman import --quiet --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' "$WORK/img.tar" "$IMAGE" >/dev/null
echo "built $IMAGE"
