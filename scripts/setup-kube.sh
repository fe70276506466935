#!/usr/bin/env bash
# Provide a Kubernetes API server and controller manager for the `kube` tests, or say why not.
#
#   1. a previous build in .deps/kube/bin (same source version, same fix) -> reuse it (seconds)
#   2. root + apt-get: install Debian's etcd-server and the Go toolchain, fetch Debian
#      bookworm's `kubernetes` source package (1.20.x) through a private apt sources file,
#      check its sha256 against the .dsc, swap in Debian's reflect2 1.0.2 (the vendored
#      1.0.1 crashes on Go >= 1.18 at the first custom-resource write), and build only
#      kube-apiserver and kube-controller-manager (CGO_ENABLED=0) into .deps/kube/bin
#   3. otherwise: succeed anyway; the `kube` tests then skip with the reason printed here
#      (kept in .deps/kube/unavailable), or fail under DORMANT_REQUIRE_KUBE=1.
#
# The node (kubelet, kube-scheduler, kube-proxy, containerd) is scripts/setup-node.sh's.
# Never fails the whole setup. Logs: .deps/kube/*.log.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS="$ROOT/.deps"
KUBE="$DEPS/kube"
BIN="$KUBE/bin"
# Bump when the way the binaries are built changes: an old build is then rebuilt.
RECIPE=1-reflect2-1.0.2-cgo0

say() { printf 'setup-kube: %s\n' "$*" >&2; }
give_up() { # $1 = why; the tests print it when they skip
    mkdir -p "$KUBE"
    printf '%s\n' "$1" >"$KUBE/unavailable"
    say "$1"
    say "the kube tests will skip (or fail under DORMANT_REQUIRE_KUBE=1)."
    exit 0
}

mkdir -p "$KUBE"
start=$(date +%s)

have_build() {
    [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] &&
        [ "$(cat "$BIN/RECIPE" 2>/dev/null)" = "$RECIPE" ] &&
        "$BIN/kube-apiserver" --version >/dev/null 2>&1
}

runtime_pkgs=(etcd-server)
build_pkgs=(golang-go rsync jq golang-github-modern-go-reflect2-dev dpkg-dev xz-utils make)

apt_ok=0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then apt_ok=1; fi

# 1. an earlier build: only make sure etcd is there.
if have_build; then
    if ! command -v etcd >/dev/null 2>&1; then
        [ "$apt_ok" -eq 1 ] || give_up "no etcd and cannot install it (needs root and apt-get)."
        say "installing etcd-server from Debian"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${runtime_pkgs[@]}"; } >"$KUBE/apt.log" 2>&1; then
            give_up "apt-get install etcd-server failed (log: .deps/kube/apt.log)."
        fi
    fi
    rm -f "$KUBE/unavailable"
    say "using $("$BIN/kube-apiserver" --version) from .deps/kube/bin ($(($(date +%s) - start)) s)"
    exit 0
fi

# 2. build from Debian's source package.
[ "$apt_ok" -eq 1 ] || give_up "no kube-apiserver build and cannot make one (needs root and apt-get)."

say "installing etcd-server and the Go toolchain from Debian"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${runtime_pkgs[@]}" "${build_pkgs[@]}"; } >"$KUBE/apt.log" 2>&1; then
    give_up "apt-get install failed (log: .deps/kube/apt.log)."
fi

say "fetching and unpacking the kubernetes source package (bookworm)"
tree="$KUBE/src"
# shellcheck source=scripts/kube-source.sh
. "$ROOT/scripts/kube-source.sh"
kube_source "$KUBE/apt-src" "$tree" || give_up "$KSRC_WHY."
ver=$KSRC_VER

say "building kube-apiserver and kube-controller-manager $ver (several minutes on 2 cores; log: .deps/kube/build.log)"
# Everything comes from vendor/ (GOPROXY=off: no module downloads); the build keeps its Go
# cache and GOPATH under _output in the tree. Static binaries: no cgo.
export GOFLAGS=-mod=vendor GOPROXY=off CGO_ENABLED=0
export KUBE_GIT_VERSION="v$ver" KUBE_GIT_TREE_STATE=clean
if ! make -C "$tree" WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$KUBE/build.log" 2>&1; then
    give_up "building kubernetes $ver failed (log: .deps/kube/build.log)."
fi
out="$tree/_output/local/bin/linux/$(go env GOARCH)"
mkdir -p "$BIN.tmp"
cp "$out/kube-apiserver" "$out/kube-controller-manager" "$BIN.tmp/" ||
    give_up "the build left no binaries in $out (log: .deps/kube/build.log)."
printf '%s\n' "$RECIPE" >"$BIN.tmp/RECIPE"
rm -rf "$BIN"; mv "$BIN.tmp" "$BIN"
# The source tree (about 1 GB with its Go build cache) is not needed once the binaries exist.
rm -rf "$tree" "$KUBE/apt-src/dl"
have_build || give_up "the built kube-apiserver does not run (log: .deps/kube/build.log)."
rm -f "$KUBE/unavailable"
say "built $("$BIN/kube-apiserver" --version) in $(($(date +%s) - start)) s"
exit 0
