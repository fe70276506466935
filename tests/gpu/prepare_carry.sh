#!/usr/bin/env bash
# Run HERE (not on the device) before tests/gpu/run_on_device.sh: puts what the device
# machine lacks into two folders that git ignores and the device tool carries
# (`carry: [".whl", ".criu"]`, about 20 MiB together):
#   .whl/   wheels for the reference server's web stack and a transformers new enough for it
#           (the machine has PyTorch, no fastapi/uvicorn/pydantic), same versions as .venv/
#   .criu/  this CRIU build and the shared libraries it needs beyond glibc (used only where
#           the device's kernel can run CRIU; gVisor cannot)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=.venv/bin/python
for dir in /.whl/ /.criu/; do
    grep -qxF "$dir" .git/info/exclude 2>/dev/null || echo "$dir" >> .git/info/exclude
done

rm -rf .whl && mkdir -p .whl
for pkg in fastapi starlette pydantic pydantic_core annotated-types typing-inspection \
           typing_extensions uvicorn h11 transformers opentelemetry-api; do
    version=$("$PY" -m pip show "$pkg" | awk '/^Version:/ {print $2}')
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .whl "$pkg==$version"
done

rm -rf .criu && mkdir -p .criu/lib
if [ -e .venv/bin/criu ]; then
    criu=$(readlink -f .venv/bin/criu)
    cp "$criu" .criu/criu
    ldd "$criu" | awk '/=> \// {print $3}' \
        | grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so' \
        | xargs -r -I{} cp -L {} .criu/lib/
else
    echo "no .venv/bin/criu (run make setup): the device run will skip its CRIU test" >&2
fi
du -sh .whl .criu
