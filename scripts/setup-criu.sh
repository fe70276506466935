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

# A private apt configuration that only knows sid's source index, built from the
# mirror this machine already uses: the system's apt state is not touched.
src="$DEPS/apt-src"
rm -rf "$src"; mkdir -p "$src/lists/partial" "$src/dl"
mirror=$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | grep '/debian' | head -n1)
if [ -z "$mirror" ]; then
    mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print $2}' /etc/apt/sources.list 2>/dev/null | head -n1)
fi
if [ -z "$mirror" ]; then
    say "cannot find this machine's Debian mirror in its apt sources; Dormant will use the 'restart' engine."
    exit 0
fi
cat >"$src/sid-src.sources" <<EOF
Types: deb-src
URIs: $mirror
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_src=(-o "Dir::Etc::SourceList=$src/sid-src.sources" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$src/lists" -o "Dir::Cache=$src/cache")
say "fetching the criu source package (sid)"
if ! apt-get "${apt_src[@]}" update -qq >"$src/update.log" 2>&1; then
    say "apt-get update for sources failed (log: .deps/apt-src/update.log); Dormant will use the 'restart' engine."
    exit 0
fi
# The .dsc names the .orig tarball and its sha256; .debian.tar.xz may 404 and is not needed.
(cd "$src/dl" && apt-get "${apt_src[@]}" source --download-only criu >"$src/source.log" 2>&1)
dsc=$(ls "$src"/dl/criu_*.dsc 2>/dev/null | head -n1)
orig=$(ls "$src"/dl/criu_*.orig.tar.* 2>/dev/null | head -n1)
if [ -z "$orig" ] && [ -n "$dsc" ]; then
    say "source download incomplete; fetching the .orig tarball alone"
fi
if [ -z "$dsc" ] || [ -z "$orig" ]; then
    say "could not download the criu source package (log: .deps/apt-src/source.log); Dormant will use the 'restart' engine."
    exit 0
fi
want=$(awk '/^Checksums-Sha256:/ {f=1; next} f && /orig\.tar/ {print $1; exit}' "$dsc")
have=$(sha256sum "$orig" | cut -d' ' -f1)
if [ -z "$want" ] || [ "$want" != "$have" ]; then
    say "sha256 of $(basename "$orig") does not match its .dsc; refusing to build it."
    exit 0
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
