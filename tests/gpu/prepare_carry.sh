#!/usr/bin/env bash
# Run HERE (not on the device) before tests/gpu/device_check.sh: puts what the device
# machine lacks under .deps/gpu-carry/ (git ignores .deps/; the device tool carries it:
# `carry: [".deps/gpu-carry"]`, well under the 64 MiB a call may carry):
#   whl/   wheels for every distribution the device check imports beyond PyTorch, numpy and
#          nvidia-ml-py (tests/gpu/carry_set.py: the closure of blake3, transformers, the web
#          stack, pytest, at the versions installed in the venv, so the set is consistent),
#          for CPython 3.11-3.13 (the device's Python is one of them; fastapi needs >= 3.11)
#   criu.tar.xz  this CRIU build (stripped) in criu/ and the shared libraries it needs beyond
#          glibc in criu/lib/ (used only where the device's kernel can run CRIU; gVisor
#          cannot). Dormant passes criu/lib to criu alone (DORMANT_CRIU_LIBRARY_PATH), never
#          to the servers.
# PY (default .venv/bin/python, else /work/main/.venv/bin/python) is the venv to copy.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
CARRY=.deps/gpu-carry
rm -rf "$CARRY" && mkdir -p "$CARRY/whl"
staging=$(mktemp -d) && trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging/criu/lib"

PYTHONPATH="$PWD" "$PY" tests/gpu/carry_set.py > "$CARRY/requirements.txt"
mapfile -t wanted < "$CARRY/requirements.txt"
for pyver in 3.11 3.12 3.13; do
    abi="cp${pyver/./}"
    # --no-deps: the closure is already complete and pinned; one call per Python version
    # (pure wheels are fetched once: pip skips what is already in the folder).
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
        --implementation cp --abi "$abi" --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$CARRY/whl" "${wanted[@]}" \
        || echo "prepare_carry: some wheels for Python $pyver are missing (see above)" >&2
done

criu=$(PYTHONPATH="$PWD" "$PY" -c 'from snapshots import find_criu; print(find_criu() or "")')
if [ -n "$criu" ] && [ -e "$criu" ]; then
    criu=$(readlink -f "$criu")
    cp "$criu" "$staging/criu/criu"
    ldd "$criu" | awk '/=> \// {print $3}' \
        | grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so' \
        | xargs -r -I{} cp -L {} "$staging/criu/lib/"
    strip "$staging/criu/criu" "$staging"/criu/lib/* 2>/dev/null || true
    tar -C "$staging" -cJf "$CARRY/criu.tar.xz" criu
else
    echo "no criu here (run make setup): the device check will skip its CRIU step" >&2
fi
du -sh "$CARRY"/* "$CARRY"
