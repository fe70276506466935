#!/usr/bin/env bash
# Provide a working CRIU (>= 4.2) for Dormant, or explain why there is none.
#
#   1. a `criu` on PATH that is >= 4.2 and passes `criu check`  -> use it
#   2. a previous build in .deps/criu                            -> reuse it
#   3. root + apt-get: build CRIU 4.2.x from Debian's source package (suite sid)
#      into .deps/criu (git-ignored, reused by later runs)
#   4. otherwise: succeed anyway; Dormant then uses the `restart` engine and
#      `dormant check` says why.
#
# The chosen binary is linked as $VENV/bin/criu, where Dormant looks first.
# Never fails the whole setup: CRIU is an accelerator, not a requirement.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS="$ROOT/.deps"
VENV=${VENV:-"$ROOT/.venv"}
BUILD="$DEPS/criu"
MIN_MAJOR=4
MIN_MINOR=2

say() { printf 'setup-criu: %s\n' "$*" >&2; }

version_ok() { # $1 = path to criu
    local v major minor
    v=$("$1" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1)
    [ -n "$v" ] || return 1
    major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
    [ "$major" -gt "$MIN_MAJOR" ] || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -ge "$MIN_MINOR" ]; }
}

works() { # $1 = path to criu: version is new enough and `criu check` passes
    version_ok "$1" || return 1
    [ "$(id -u)" -eq 0 ] || return 0   # criu check itself needs root; let `dormant check` say more
    "$1" check >/dev/null 2>&1
}

link_into_venv() {
    mkdir -p "$VENV/bin"
    ln -sf "$1" "$VENV/bin/criu"
    say "using $("$1" --version | head -n1) at $1"
}

# 1. system criu
if sys_criu=$(command -v criu 2>/dev/null) && [ "$sys_criu" != "$VENV/bin/criu" ] && works "$sys_criu"; then
    link_into_venv "$sys_criu"; exit 0
fi
# 2. an earlier build
if [ -x "$BUILD/criu/criu" ] && works "$BUILD/criu/criu"; then
    link_into_venv "$BUILD/criu/criu"; exit 0
fi
# 3. build from Debian's source package
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "no CRIU >= $MIN_MAJOR.$MIN_MINOR and cannot build one (needs root and apt-get)."
    say "Dormant will run with the 'restart' engine (stop + cold boot). See README: CRIU."
    exit 0
fi

build_deps=(build-essential libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler
    python3-protobuf libnl-3-dev libnet1-dev libcap-dev pkg-config libbsd-dev libgnutls28-dev
    libnftables-dev uuid-dev libaio-dev libdrm-dev xz-utils dpkg-dev)
say "installing CRIU build dependencies from Debian"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${build_deps[@]}"; } >"$DEPS.apt.log" 2>&1; then
    mkdir -p "$DEPS"; mv -f "$DEPS.apt.log" "$DEPS/apt.log" 2>/dev/null
    say "apt-get failed (log: .deps/apt.log); Dormant will use the 'restart' engine."
    exit 0
fi
mkdir -p "$DEPS"; mv -f "$DEPS.apt.log" "$DEPS/apt.log"

say "fetching the criu source package (sid)"
# shellcheck source=scripts/debian-source.sh
. "$ROOT/scripts/debian-source.sh"
if ! debian_source "$DEPS/apt-src" sid criu; then
    say "$DEBSRC_WHY; Dormant will use the 'restart' engine."
    exit 0
fi
orig=$DEBSRC_ORIG
ver=$(basename "$orig" | sed -E 's/^criu_([0-9.]+)\.orig.*/\1/')
major=${ver%%.*}; minor=${ver#*.}; minor=${minor%%.*}
if ! { [ "$major" -gt "$MIN_MAJOR" ] || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -ge "$MIN_MINOR" ]; }; }; then
    say "Debian sid has criu $ver, older than $MIN_MAJOR.$MIN_MINOR which this kernel needs; Dormant will use the 'restart' engine."
    exit 0
fi

say "building criu $ver (about a minute on 2 cores)"
rm -rf "$BUILD.tmp"; mkdir -p "$BUILD.tmp"
tar -xf "$orig" -C "$BUILD.tmp" --strip-components=1
if ! make -C "$BUILD.tmp" -j"$(nproc)" criu >"$DEPS/criu-build.log" 2>&1; then
    say "criu build failed (log: .deps/criu-build.log); Dormant will use the 'restart' engine."
    exit 0
fi
rm -rf "$BUILD"; mv "$BUILD.tmp" "$BUILD"
if works "$BUILD/criu/criu"; then
    link_into_venv "$BUILD/criu/criu"
else
    say "built criu $ver but \`criu check\` fails here; Dormant will use the 'restart' engine. Run 'dormant check'."
fi
exit 0
