#!/usr/bin/env bash
# Provide a headless Chromium for the browser test (tests/integration/test_browser.py),
# or explain why there is none.
#
#   1. `chromium` on PATH                     -> use it
#   2. root + apt-get: install Debian's `chromium` package (fonts come with it)
#   3. otherwise: succeed anyway; the browser test is then skipped with the reason.
#
# Only Debian's package is used: Playwright drives it (executable_path), it never
# downloads a browser of its own. Never fails the whole setup: the browser is needed
# by one test, not by Dormant.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS="$ROOT/.deps"
LOG="$DEPS/browser-apt.log"

say() { printf 'setup-browser: %s\n' "$*" >&2; }

report() {
    say "using $("$1" --version 2>/dev/null | head -n1) at $1"
}

if browser=$(command -v chromium 2>/dev/null); then
    report "$browser"; exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "no chromium and cannot install one (needs root and apt-get); the browser test will be skipped."
    exit 0
fi

mkdir -p "$DEPS"
install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation
}
say "installing Debian's chromium (once; about 100 MB)"
# Install from the lists the machine has; only when that fails, refresh them and retry.
if ! { install || { apt-get update -qq && install; }; } >"$LOG" 2>&1; then
    say "apt-get failed (log: .deps/browser-apt.log); the browser test will be skipped."
    exit 0
fi
if browser=$(command -v chromium 2>/dev/null); then
    report "$browser"
else
    say "apt-get installed chromium but it is not on PATH (log: .deps/browser-apt.log); the browser test will be skipped."
fi
exit 0
