#!/usr/bin/env bash
# An nginx binary for `make bench-proxy` (measured beside Dormant on the paced streams):
# nginx on PATH, else Debian's package unpacked into .deps/nginx (not installed: no
# service is started, nothing outside the repository changes). Never fails: without
# nginx the bench says so and measures the rest.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST="$ROOT/.deps/nginx"
command -v nginx >/dev/null 2>&1 && exit 0
[ -x "$DEST/usr/sbin/nginx" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
    echo "fetch-nginx: no apt-get/dpkg here; the bench runs without nginx" >&2
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && apt-get download nginx >"$tmp/log" 2>&1); then
    echo "fetch-nginx: apt-get download nginx failed ($(tail -n1 "$tmp/log")); the bench runs without nginx" >&2
    exit 0
fi
mkdir -p "$DEST.tmp" && dpkg -x "$tmp"/nginx_*.deb "$DEST.tmp" && rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
if "$DEST/usr/sbin/nginx" -v >/dev/null 2>&1; then
    echo "fetch-nginx: $("$DEST/usr/sbin/nginx" -v 2>&1) unpacked into .deps/nginx" >&2
else
    echo "fetch-nginx: the unpacked nginx does not run (missing libraries?); the bench runs without it" >&2
    rm -rf "$DEST"
fi
exit 0
