# Sourced by setup-kube.sh and setup-node.sh: Debian bookworm's `kubernetes` source tree (1.20.x),
# ready to build with Go >= 1.18.
#
#   kube_source DIR TREE
#
# Fetches the source package into DIR (scripts/debian-source.sh: a private apt configuration,
# the tarball's sha256 checked against the .dsc), unpacks it into TREE and replaces the vendored
# github.com/modern-go/reflect2 1.0.1 (its map iteration crashes on Go >= 1.18, at the API
# server's first custom-resource write) with Debian's golang-github-modern-go-reflect2-dev 1.0.2.
# On success sets KSRC_VER (e.g. 1.20.2) and returns 0; otherwise sets KSRC_WHY and returns 1.

KSRC_MAJOR_MINOR=1.20

kube_source() {
    local dir=$1 tree=$2 orig name reflect2
    KSRC_VER="" KSRC_WHY=""
    # shellcheck source=scripts/debian-source.sh
    . "$ROOT/scripts/debian-source.sh"
    if ! debian_source "$dir" bookworm kubernetes; then
        KSRC_WHY=$DEBSRC_WHY
        return 1
    fi
    orig=$DEBSRC_ORIG
    name=$(basename "$orig")
    # e.g. kubernetes_1.20.5+really1.20.2.orig.tar.gz: the real version is after "really".
    KSRC_VER=$(printf '%s' "$name" | sed -E 's/^kubernetes_//; s/\.orig\.tar\..*$//; s/^.*really//')
    case "$KSRC_VER" in
        "$KSRC_MAJOR_MINOR".*) ;;
        *)
            KSRC_WHY="Debian bookworm has kubernetes $KSRC_VER, not $KSRC_MAJOR_MINOR.x, which these tests are written for"
            return 1
            ;;
    esac
    reflect2=$(dpkg -L golang-github-modern-go-reflect2-dev 2>/dev/null | grep '/github.com/modern-go/reflect2/reflect2.go$' | head -n1)
    if [ -z "$reflect2" ]; then
        KSRC_WHY="golang-github-modern-go-reflect2-dev has no reflect2.go (dpkg -L); cannot fix the 1.20 build"
        return 1
    fi
    reflect2=$(dirname "$reflect2")
    rm -rf "$tree"; mkdir -p "$tree"
    if ! tar -xf "$orig" -C "$tree" --strip-components=1 2>"$dir/unpack.log"; then
        KSRC_WHY="could not unpack $name (log: ${dir#"$ROOT/"}/unpack.log)"
        return 1
    fi
    if [ ! -d "$tree/vendor/github.com/modern-go/reflect2" ]; then
        KSRC_WHY="kubernetes $KSRC_VER has no vendored reflect2 where expected; the build recipe needs updating"
        return 1
    fi
    rm -rf "$tree/vendor/github.com/modern-go/reflect2"
    cp -r "$reflect2" "$tree/vendor/github.com/modern-go/reflect2"
    rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod" "$tree/vendor/github.com/modern-go/reflect2/go.sum"
}
