#!/usr/bin/env bash
# Provide a working CRIU (>= 4.2) for Dormant, or explain why there is none.
#
#   1. a `criu` on PATH that is >= 4.2 and passes `criu check`  -> use it
#      (not on a CPU with AMX: stock CRIU loses the AMX permission on restore)
#   2. a previous build in .deps/criu with the same patches         -> reuse it
#   3. root + apt-get: build CRIU 4.2.x from Debian's source package (suite sid)
#      with scripts/criu-patches/*.patch applied, into .deps/criu (git-ignored,
#      reused by later runs)
#   4. otherwise: succeed anyway; Dormant then uses the `restart` engine and
#      `dormant check` says why.
#
# The chosen binary is linked as $VENV/bin/criu, where Dormant looks first.
# Never fails the whole setup: CRIU is an accelerator, not a requirement.
#
# Overrides: DEPS (where to build, default .deps), VENV (where to link criu),
# CRIU_ORIG (a criu_4.2.x.orig.tar.* to build from instead of fetching one).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS=${DEPS:-"$ROOT/.deps"}
VENV=${VENV:-"$ROOT/.venv"}
BUILD="$DEPS/criu"
PATCHES="$ROOT/scripts/criu-patches"
STAMP=.dormant-patches   # in the build: the sha256 of the patch set it was built with
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

patch_set() { # the sha256 of every patch we apply, in order ("none" without patches)
    local files
    files=$(ls "$PATCHES"/*.patch 2>/dev/null)
    if [ -z "$files" ]; then echo none; return; fi
    # shellcheck disable=SC2086
    cat $files | sha256sum | cut -d' ' -f1
}

# 1. system criu (unpatched: only where no dynamic XSAVE feature needs the patches)
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
    say "this CPU has AMX: building CRIU with Dormant's patches (stock CRIU loses the AMX permission on restore)"
elif sys_criu=$(command -v criu 2>/dev/null) && [ "$sys_criu" != "$VENV/bin/criu" ] && works "$sys_criu"; then
    link_into_venv "$sys_criu"; exit 0
fi
# 2. an earlier build with the same patches
if [ -x "$BUILD/criu/criu" ] && [ "$(cat "$BUILD/$STAMP" 2>/dev/null)" = "$(patch_set)" ] && works "$BUILD/criu/criu"; then
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
    libnftables-dev uuid-dev libaio-dev libdrm-dev xz-utils dpkg-dev patch)
mkdir -p "$DEPS"
if dpkg-query -W -f='${Status}\n' "${build_deps[@]}" 2>/dev/null | grep -qv '^install ok installed$' \
    || [ "$(dpkg-query -W -f='${Status}\n' "${build_deps[@]}" 2>/dev/null | wc -l)" -ne "${#build_deps[@]}" ]; then
    say "installing CRIU build dependencies from Debian"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${build_deps[@]}"; } >"$DEPS/apt.log" 2>&1; then
        say "apt-get failed (log: $DEPS/apt.log); Dormant will use the 'restart' engine."
        exit 0
    fi
fi

if [ -n "${CRIU_ORIG:-}" ]; then
    orig=$CRIU_ORIG
else
    say "fetching the criu source package (sid)"
    # shellcheck source=scripts/debian-source.sh
    . "$ROOT/scripts/debian-source.sh"
    if ! debian_source "$DEPS/apt-src" sid criu; then
        say "$DEBSRC_WHY; Dormant will use the 'restart' engine."
        exit 0
    fi
    orig=$DEBSRC_ORIG
fi
ver=$(basename "$orig" | sed -E 's/^criu_([0-9.]+)\.orig.*/\1/')
major=${ver%%.*}; minor=${ver#*.}; minor=${minor%%.*}
if ! { [ "$major" -gt "$MIN_MAJOR" ] || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -ge "$MIN_MINOR" ]; }; }; then
    say "Debian sid has criu $ver, older than $MIN_MAJOR.$MIN_MINOR which this kernel needs; Dormant will use the 'restart' engine."
    exit 0
fi

say "building criu $ver (about a minute on 2 cores)"
rm -rf "$BUILD.tmp"; mkdir -p "$BUILD.tmp"
tar -xf "$orig" -C "$BUILD.tmp" --strip-components=1
: >"$DEPS/criu-build.log"
for p in "$PATCHES"/*.patch; do
    [ -e "$p" ] || continue
    if ! patch -d "$BUILD.tmp" -p1 --forward --quiet <"$p" >>"$DEPS/criu-build.log" 2>&1; then
        say "patch $(basename "$p") does not apply to criu $ver (log: $DEPS/criu-build.log); Dormant will use the 'restart' engine."
        exit 0
    fi
done
patch_set >"$BUILD.tmp/$STAMP"
if ! make -C "$BUILD.tmp" -j"$(nproc)" criu >"$DEPS/criu-build.log" 2>&1; then
    say "criu build failed (log: $DEPS/criu-build.log); Dormant will use the 'restart' engine."
    exit 0
fi
rm -rf "$BUILD"; mv "$BUILD.tmp" "$BUILD"
if works "$BUILD/criu/criu"; then
    link_into_venv "$BUILD/criu/criu"
else
    say "built criu $ver but \`criu check\` fails here; Dormant will use the 'restart' engine. Run 'dormant check'."
fi
exit 0
