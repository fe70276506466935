#!/usr/bin/env bash
# Provide a real Kubernetes node for the `kube` tests (tests/kube/realnode.py), or say why not.
#
#   1. a previous build in .deps/node/bin (same source version, same recipe) -> reuse it
#   2. root + apt-get: install Debian's containerd, runc, containernetworking-plugins,
#      mmdebstrap (image builds: scripts/build-image.sh) and gcc; fetch Debian bookworm's
#      `kubernetes` source package (1.20.x) as setup-kube.sh does, with the same reflect2
#      fix, and build kubelet, kube-scheduler and kube-proxy (CGO_ENABLED=0) plus a static
#      pause binary (build/pause/linux/pause.c) into .deps/node/bin. The API server build
#      in .deps/kube/bin is left alone.
#   3. otherwise: succeed anyway; the tests then use the process-based fake node
#      (tests/kube/kubelet.py) with the reason printed here (kept in .deps/node/unavailable),
#      or fail under DORMANT_REQUIRE_NODE=1.
#
# Never fails the whole setup. Logs: .deps/node/*.log.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS="$ROOT/.deps"
NODE="$DEPS/node"
BIN="$NODE/bin"
# Bump when the way the binaries are built changes: an old build is then rebuilt.
RECIPE=1-reflect2-1.0.2-cgo0-pause-static

say() { printf 'setup-node: %s\n' "$*" >&2; }
give_up() { # $1 = why; the tests print it when they fall back to the fake node
    mkdir -p "$NODE"
    printf '%s\n' "$1" >"$NODE/unavailable"
    say "$1"
    say "the kube tests will use the fake node (or fail under DORMANT_REQUIRE_NODE=1)."
    exit 0
}

mkdir -p "$NODE"
start=$(date +%s)

have_build() {
    [ -x "$BIN/kubelet" ] && [ -x "$BIN/kube-scheduler" ] && [ -x "$BIN/kube-proxy" ] &&
        [ -x "$BIN/pause" ] && [ "$(cat "$BIN/RECIPE" 2>/dev/null)" = "$RECIPE" ] &&
        "$BIN/kubelet" --version >/dev/null 2>&1
}

# What a node needs at run time (containerd's ctr imports the images; iptables for kube-proxy).
runtime_pkgs=(containerd runc containernetworking-plugins iptables mmdebstrap)
build_pkgs=(golang-go rsync jq golang-github-modern-go-reflect2-dev dpkg-dev xz-utils make gcc libc6-dev)

[ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 ||
    give_up "a real node needs root and apt-get (containerd, runc, CNI plugins from Debian)."

missing=()
for p in "${runtime_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ! have_build; then
    for p in "${build_pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
fi
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} from Debian"
    # containerd's package would start a service: there is no init system to start it with
    # here, and the tests start their own containerd with private paths anyway.
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"; } >"$NODE/apt.log" 2>&1; then
        give_up "apt-get install ${missing[*]} failed (log: .deps/node/apt.log)."
    fi
fi
for tool in containerd runc ctr; do
    command -v "$tool" >/dev/null 2>&1 || give_up "no $tool after installing Debian's packages."
done
[ -x /usr/lib/cni/bridge ] || give_up "no CNI bridge plugin in /usr/lib/cni (containernetworking-plugins)."

if have_build; then
    rm -f "$NODE/unavailable"
    say "using $("$BIN/kubelet" --version) from .deps/node/bin ($(($(date +%s) - start)) s)"
    exit 0
fi

say "fetching and unpacking the kubernetes source package (bookworm)"
tree="$NODE/src"
# shellcheck source=scripts/kube-source.sh
. "$ROOT/scripts/kube-source.sh"
kube_source "$NODE/apt-src" "$tree" || give_up "$KSRC_WHY."
ver=$KSRC_VER

mkdir -p "$BIN.tmp"
# The sandbox ("pause") container's program: no Debian package ships it.
say "compiling the static pause binary"
gcc -Os -static -Wall -o "$BIN.tmp/pause" "$tree/build/pause/linux/pause.c" >"$NODE/pause.log" 2>&1 ||
    give_up "compiling build/pause/linux/pause.c failed (log: .deps/node/pause.log)."

say "building kubelet, kube-scheduler and kube-proxy $ver (10-17 min on 2 busy cores; log: .deps/node/build.log)"
export GOFLAGS=-mod=vendor GOPROXY=off CGO_ENABLED=0
export KUBE_GIT_VERSION="v$ver" KUBE_GIT_TREE_STATE=clean
make -C "$tree" WHAT="cmd/kubelet cmd/kube-scheduler cmd/kube-proxy" >"$NODE/build.log" 2>&1 ||
    give_up "building kubernetes $ver node binaries failed (log: .deps/node/build.log)."
out="$tree/_output/local/bin/linux/$(go env GOARCH)"
cp "$out/kubelet" "$out/kube-scheduler" "$out/kube-proxy" "$BIN.tmp/" ||
    give_up "the build left no binaries in $out (log: .deps/node/build.log)."
printf '%s\n' "$RECIPE" >"$BIN.tmp/RECIPE"
rm -rf "$BIN"; mv "$BIN.tmp" "$BIN"
rm -rf "$tree" "$NODE/apt-src/dl"
have_build || give_up "the built kubelet does not run (log: .deps/node/build.log)."
rm -f "$NODE/unavailable"
say "built $("$BIN/kubelet" --version) in $(($(date +%s) - start)) s"
exit 0
