#!/usr/bin/env bash
# Build (or reuse) a Debian 13 "trixie" root with GIMP 3 for the real-GIMP tests.
#
#   host_plugins/gimp/testing/build_root.sh ROOT
#
# Idempotent: when ROOT already holds a finished build (marker file written last), it exits
# at once. Needs root and debootstrap. The root uses the host's network (chroot) and is kept
# outside the work tree so later runs on the same machine reuse it.
set -euo pipefail
ROOT="${1:?usage: build_root.sh ROOT}"
MIRROR="${INPAINTD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
case "$(realpath -m "$ROOT")" in
    /|/usr|/var|/tmp|/home|/root) echo "build_root: refusing ROOT=$ROOT" >&2; exit 2 ;;
esac
MARKER="$ROOT/.inpaintd-gimp-root-complete"
# GIMP 3 and what the plug-in imports; Xvfb and xdotool for the dialog test.
PACKAGES="gimp python3-gi gir1.2-gimp-3.0 gir1.2-gegl-0.4 python3-zmq python3-msgpack python3-numpy xvfb xauth xdotool"

# The marker holds the package list it was built with: a root built with another list
# gets the missing packages installed (no new debootstrap).
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$PACKAGES" ]; then
    echo "build_root: $ROOT is complete, reusing it"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "build_root: must run as root (debootstrap, chroot)" >&2
    exit 2
fi
command -v debootstrap >/dev/null || { echo "build_root: debootstrap not installed" >&2; exit 2; }

mkdir -p "$ROOT"
if [ ! -x "$ROOT/usr/bin/apt-get" ] || [ ! -f "$ROOT/.inpaintd-debootstrap-done" ]; then
    # A half-finished debootstrap cannot be resumed reliably: start over.
    rm -rf "${ROOT:?}"/* 2>/dev/null || true
    debootstrap --variant=minbase trixie "$ROOT" "$MIRROR"
    touch "$ROOT/.inpaintd-debootstrap-done"
fi

cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get update -q
chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends $PACKAGES
chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get clean
chroot "$ROOT" gimp-console --version
echo "$PACKAGES" > "$MARKER"
echo "build_root: $ROOT done"
