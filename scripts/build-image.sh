#!/usr/bin/env bash
# Build Dormant's container image from Debian packages, without a base image or a registry:
#
#   1. the inputs (pyproject.toml, the packages' sources, this recipe, the CRIU binary) hash to
#      the same value as the last build's -> reuse .deps/image/dormant.tar (seconds)
#   2. `pip wheel` Dormant (non-editable) with its `refserver` and `kube` extras (the model
#      server; the activator's and operator's Kubernetes client and kopf) into .deps/image/wheels,
#      with this machine's pip (its configuration and cache: nothing is fetched twice)
#   3. mmdebstrap a Debian bookworm root filesystem (python3, the runtime libraries of CRIU
#      4.2: libbsd0 libgnutls30 libnftables1 libprotobuf-c1 libnl-3-200 libnet1 libuuid1),
#      install the wheels offline into a venv at /opt/dormant and CRIU (the `make criu`
#      build) at /usr/local/sbin/criu, and the user the activator and operator run as
#      (dormant, uid/gid 65532: deploy/ runs them as that uid; kopf asks for its name)
#   4. wrap it into a one-layer docker-archive tagged dormant:VERSION (pyproject's version,
#      what deploy/ names) at .deps/image/dormant.tar: `ctr -n k8s.io images import` or
#      `docker load -i` it. The suite's real node (tests/kube/realnode.py) imports it.
#
# Needs root, mmdebstrap (scripts/setup-node.sh installs it) and the venv (`make setup`).
# Exits non-zero on failure; IMAGE_OPTIONAL=1 (what `make setup` passes) writes the reason
# to .deps/image/unavailable and exits 0. For Docker users: the top-level Dockerfile.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/.deps/image"
PY=${PYTHON:-$ROOT/.venv/bin/python}
CRIU=${CRIU:-$ROOT/.venv/bin/criu}
SUITE=bookworm
# Bump when the image's recipe changes in a way the hashed inputs do not show.
RECIPE=2
PACKAGES=python3,python3-venv,ca-certificates,iproute2,libbsd0,libgnutls30,libnftables1,libprotobuf-c1,libnl-3-200,libnet1,libuuid1

say() { printf 'build-image: %s\n' "$*" >&2; }
fail() {
    mkdir -p "$OUT"
    printf '%s\n' "$1" >"$OUT/unavailable"
    say "$1"
    if [ "${IMAGE_OPTIONAL:-0}" = 1 ]; then
        say "the tests that need the image will skip (or fail under DORMANT_REQUIRE_NODE=1)."
        exit 0
    fi
    exit 1
}

mkdir -p "$OUT"
start=$(date +%s)
cd "$ROOT"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)
[ -n "$version" ] || fail "no version in pyproject.toml"
TAG="dormant:$version"

[ -x "$PY" ] || fail "no venv at ${PY#"$ROOT/"}; run \`make setup\` first."
[ -x "$CRIU" ] || fail "no CRIU build at ${CRIU#"$ROOT/"}; run \`make criu\` first."

# What the image is made of: the hash of these decides whether to rebuild.
sources=$(git ls-files -co --exclude-standard -- pyproject.toml activator warmpool snapshots \
    deploy loadtests examples scripts/build-image.sh scripts/docker_archive.py | LC_ALL=C sort)
# shellcheck disable=SC2086
inputs=$({
    echo "recipe $RECIPE $SUITE $PACKAGES $TAG"
    sha256sum $sources "$CRIU"
} | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/dormant.tar" ] && [ "$(cat "$OUT/dormant.inputs" 2>/dev/null)" = "$inputs" ]; then
    rm -f "$OUT/unavailable"
    say "reusing .deps/image/dormant.tar ($TAG, inputs unchanged; $(($(date +%s) - start)) s)"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || fail "building the image needs root (mmdebstrap --mode=root, chroot)."
command -v mmdebstrap >/dev/null 2>&1 || fail "no mmdebstrap; run scripts/setup-node.sh (make kube) or apt-get install mmdebstrap."
mirror=$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | grep '/debian' | head -n1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print $2}' /etc/apt/sources.list 2>/dev/null | head -n1)
[ -n "$mirror" ] || fail "cannot find this machine's Debian mirror in its apt sources."

say "collecting the wheels of dormant[refserver,kube] (log: .deps/image/wheels.log)"
rm -rf "$OUT/wheels"
# Built from a copy: an in-tree build would leave build/ and *.egg-info behind.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
# shellcheck disable=SC2086
tar -cf - $sources README.md | tar -xf - -C "$src" ||
    fail "could not copy the sources to build the wheel from."
"$PY" -m pip wheel -q --wheel-dir "$OUT/wheels" "$src[refserver,kube]" >"$OUT/wheels.log" 2>&1 ||
    fail "pip wheel dormant[refserver,kube] failed (log: .deps/image/wheels.log)."

say "building the $SUITE root filesystem with mmdebstrap (a few minutes; log: .deps/image/mmdebstrap.log)"
in_chroot='env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root chroot "$1"'
if ! mmdebstrap --mode=root --variant=apt --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="mkdir -p \"\$1/tmp/wheels\" && cp '$OUT'/wheels/*.whl \"\$1/tmp/wheels/\"" \
    --customize-hook="$in_chroot python3 -m venv /opt/dormant" \
    --customize-hook="$in_chroot /opt/dormant/bin/pip install -q --no-index --no-cache-dir --find-links /tmp/wheels 'dormant[refserver,kube]'" \
    --customize-hook="rm -rf \"\$1/tmp/wheels\" \"\$1\"/var/lib/apt/lists/* \"\$1\"/var/cache/apt/*" \
    --customize-hook="install -m 0755 '$CRIU' \"\$1/usr/local/sbin/criu\"" \
    --customize-hook="$in_chroot /usr/local/sbin/criu --version" \
    --customize-hook="$in_chroot groupadd --system --gid 65532 dormant" \
    --customize-hook="$in_chroot useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin dormant" \
    "$SUITE" "$OUT/rootfs.tar" "$mirror" >"$OUT/mmdebstrap.log" 2>&1; then
    fail "mmdebstrap failed (log: .deps/image/mmdebstrap.log)."
fi

say "writing the docker-archive $TAG"
python3 scripts/docker_archive.py "$OUT/rootfs.tar" "$TAG" "$OUT/dormant.tar" \
    --env PATH=/opt/dormant/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env PYTHONUNBUFFERED=1 --workdir / --cmd dormant --help >"$OUT/image-id" ||
    fail "could not write the docker-archive."
rm -f "$OUT/rootfs.tar"
printf '%s\n' "$TAG" >"$OUT/dormant.tag"
printf '%s\n' "$inputs" >"$OUT/dormant.inputs"
rm -f "$OUT/unavailable"
say "built $TAG ($(du -h "$OUT/dormant.tar" | cut -f1)) in $(($(date +%s) - start)) s"
