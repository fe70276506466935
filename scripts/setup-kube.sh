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
# No kubelet, scheduler or container runtime: tests/kube/kubelet.py plays the node.
# Never fails the whole setup. Logs: .deps/kube/*.log.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS="$ROOT/.deps"
KUBE="$DEPS/kube"
BIN="$KUBE/bin"
WANT_MAJOR_MINOR=1.20
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

# A private apt configuration that only knows bookworm's source index, built from the
# mirror this machine already uses: the system's apt state is not touched.
src="$KUBE/apt-src"
rm -rf "$src"; mkdir -p "$src/lists/partial" "$src/dl"
mirror=$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | grep '/debian' | head -n1)
if [ -z "$mirror" ]; then
    mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print $2}' /etc/apt/sources.list 2>/dev/null | head -n1)
fi
[ -n "$mirror" ] || give_up "cannot find this machine's Debian mirror in its apt sources."
cat >"$src/bookworm-src.sources" <<EOF
Types: deb-src
URIs: $mirror
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_src=(-o "Dir::Etc::SourceList=$src/bookworm-src.sources" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$src/lists" -o "Dir::Cache=$src/cache")
say "fetching the kubernetes source package (bookworm)"
if ! apt-get "${apt_src[@]}" update -qq >"$src/update.log" 2>&1; then
    give_up "apt-get update for sources failed (log: .deps/kube/apt-src/update.log)."
fi
(cd "$src/dl" && apt-get "${apt_src[@]}" source --download-only kubernetes >"$src/source.log" 2>&1)
dsc=$(ls "$src"/dl/kubernetes_*.dsc 2>/dev/null | head -n1)
orig=$(ls "$src"/dl/kubernetes_*.orig.tar.* 2>/dev/null | head -n1)
if [ -z "$dsc" ] || [ -z "$orig" ]; then
    give_up "could not download the kubernetes source package (log: .deps/kube/apt-src/source.log)."
fi
name=$(basename "$orig")
want=$(awk -v f="$name" '/^Checksums-Sha256:/ {s=1; next} /^[^ ]/ {s=0} s && $3 == f {print $1; exit}' "$dsc")
have=$(sha256sum "$orig" | cut -d' ' -f1)
if [ -z "$want" ] || [ "$want" != "$have" ]; then
    give_up "sha256 of $name does not match its .dsc; refusing to build it."
fi
# e.g. kubernetes_1.20.5+really1.20.2.orig.tar.gz: the real version is after "really".
ver=$(printf '%s' "$name" | sed -E 's/^kubernetes_//; s/\.orig\.tar\..*$//; s/^.*really//')
case "$ver" in
    "$WANT_MAJOR_MINOR".*) ;;
    *) give_up "Debian bookworm has kubernetes $ver, not $WANT_MAJOR_MINOR.x, which these tests are written for." ;;
esac

reflect2=$(dpkg -L golang-github-modern-go-reflect2-dev 2>/dev/null | grep '/github.com/modern-go/reflect2/reflect2.go$' | head -n1)
[ -n "$reflect2" ] || give_up "golang-github-modern-go-reflect2-dev has no reflect2.go (dpkg -L); cannot fix the 1.20 build."
reflect2=$(dirname "$reflect2")

tree="$KUBE/src"
say "unpacking kubernetes $ver"
rm -rf "$tree"; mkdir -p "$tree"
if ! tar -xf "$orig" -C "$tree" --strip-components=1 2>"$KUBE/unpack.log"; then
    give_up "could not unpack $name (log: .deps/kube/unpack.log)."
fi
[ -d "$tree/vendor/github.com/modern-go/reflect2" ] ||
    give_up "kubernetes $ver has no vendored reflect2 where expected; the build recipe needs updating."
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
cp -r "$reflect2" "$tree/vendor/github.com/modern-go/reflect2"
rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod" "$tree/vendor/github.com/modern-go/reflect2/go.sum"

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
rm -rf "$tree" "$src/dl"
have_build || give_up "the built kube-apiserver does not run (log: .deps/kube/build.log)."
rm -f "$KUBE/unavailable"
say "built $("$BIN/kube-apiserver" --version) in $(($(date +%s) - start)) s"
exit 0
