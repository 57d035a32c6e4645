#!/usr/bin/env bash
# Build (or reuse) a minimal Debian root holding a host (Krita, GIMP) for the real-host tests.
#
#   host_plugins/testing/build_root.sh ROOT SUITE "PACKAGES" ["EXPERIMENTAL_PACKAGES"]
#
# Which roots exist and what each holds is written once, in host_plugins/testing/roots.py
# (`python3 host_plugins/testing/roots.py build` builds them all); this script is its worker.
# Idempotent: when ROOT already holds a finished build of the same package lists (marker file
# written last), it exits at once. Needs root and debootstrap. The root shares the host's
# network (plain chroot) and is kept outside the work tree, so later runs reuse it.
set -euo pipefail
ROOT="${1:?usage: build_root.sh ROOT SUITE PACKAGES [EXPERIMENTAL_PACKAGES]}"
SUITE="${2:?suite missing}"
PACKAGES="${3:?packages missing}"
EXPERIMENTAL="${4:-}"
MIRROR="${INPAINTD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
case "$(realpath -m "$ROOT")" in
    /|/usr|/var|/var/cache|/tmp|/home|/root) echo "build_root: refusing ROOT=$ROOT" >&2; exit 2 ;;
esac
MARKER="$ROOT/.inpaintd-root-complete"
WANT="$SUITE | $PACKAGES | $EXPERIMENTAL"

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ]; then
    echo "build_root: $ROOT is complete, reusing it"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "build_root: must run as root (debootstrap, chroot)" >&2
    exit 2
fi
command -v debootstrap >/dev/null || { echo "build_root: debootstrap not installed" >&2; exit 2; }

mkdir -p "$ROOT"
if [ ! -x "$ROOT/usr/bin/apt-get" ] || [ ! -f "$ROOT/.inpaintd-debootstrap-done" ] \
        || [ "$(cat "$ROOT/.inpaintd-debootstrap-done")" != "$SUITE" ]; then
    # A half-finished debootstrap cannot be resumed reliably: start over.
    rm -rf "${ROOT:?}"/* "$ROOT"/.inpaintd-* 2>/dev/null || true
    debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR"
    echo "$SUITE" > "$ROOT/.inpaintd-debootstrap-done"
fi

cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
# The mirror may serve Release files past their Valid-Until date; apt inside the root
# would refuse them (debootstrap does not check).
echo 'Acquire::Check-Valid-Until "false";' > "$ROOT/etc/apt/apt.conf.d/99inpaintd-no-valid-until"
if [ -n "$EXPERIMENTAL" ]; then
    echo "deb $MIRROR experimental main" > "$ROOT/etc/apt/sources.list.d/experimental.list"
fi
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
in_root() { chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive "$@"; }
in_root apt-get update -q
in_root apt-get install -y -q --no-install-recommends $PACKAGES
if [ -n "$EXPERIMENTAL" ]; then
    in_root apt-get install -y -q --no-install-recommends -t experimental $EXPERIMENTAL
fi
in_root apt-get clean
echo "$WANT" > "$MARKER"
echo "build_root: $ROOT done"
