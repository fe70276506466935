# Sourced by the setup scripts: fetch a Debian source package's .orig tarball through a
# private apt configuration built from the mirror this machine already uses (the system's
# apt state is not touched), and check its sha256 against the .dsc.
#
#   debian_source DIR SUITE PACKAGE
#
# On success sets DEBSRC_ORIG (the tarball) and DEBSRC_DSC and returns 0; otherwise sets
# DEBSRC_WHY (what failed, with the log to read) and returns 1. The .debian.tar.* may 404
# when the mirror's index is newer than its pool: the .orig tarball alone is enough.

debian_source() {
    local dir=$1 suite=$2 pkg=$3 mirror name want have shown
    shown=${dir#"${ROOT:-}/"}
    DEBSRC_ORIG="" DEBSRC_DSC="" DEBSRC_WHY=""
    rm -rf "$dir"; mkdir -p "$dir/lists/partial" "$dir/dl"
    mirror=$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | grep '/debian' | head -n1)
    if [ -z "$mirror" ]; then
        mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print $2}' /etc/apt/sources.list 2>/dev/null | head -n1)
    fi
    if [ -z "$mirror" ]; then
        DEBSRC_WHY="cannot find this machine's Debian mirror in its apt sources"
        return 1
    fi
    cat >"$dir/$suite-src.sources" <<SOURCES
Types: deb-src
URIs: $mirror
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    local opts=(-o "Dir::Etc::SourceList=$dir/$suite-src.sources" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache")
    if ! apt-get "${opts[@]}" update -qq >"$dir/update.log" 2>&1; then
        DEBSRC_WHY="apt-get update for sources failed (log: $shown/update.log)"
        return 1
    fi
    (cd "$dir/dl" && apt-get "${opts[@]}" source --download-only "$pkg" >"$dir/source.log" 2>&1)
    DEBSRC_DSC=$(ls "$dir"/dl/"$pkg"_*.dsc 2>/dev/null | head -n1)
    DEBSRC_ORIG=$(ls "$dir"/dl/"$pkg"_*.orig.tar.* 2>/dev/null | head -n1)
    if [ -z "$DEBSRC_DSC" ] || [ -z "$DEBSRC_ORIG" ]; then
        DEBSRC_WHY="could not download the $pkg source package (log: $shown/source.log)"
        return 1
    fi
    name=$(basename "$DEBSRC_ORIG")
    want=$(awk -v f="$name" '/^Checksums-Sha256:/ {s=1; next} /^[^ ]/ {s=0} s && $3 == f {print $1; exit}' "$DEBSRC_DSC")
    have=$(sha256sum "$DEBSRC_ORIG" | cut -d' ' -f1)
    if [ -z "$want" ] || [ "$want" != "$have" ]; then
        DEBSRC_WHY="sha256 of $name does not match its .dsc; refusing to build it"
        return 1
    fi
}
