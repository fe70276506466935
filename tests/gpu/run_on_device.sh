#!/usr/bin/env bash
# The one prepared script for a session lent an NVIDIA machine (the device tool). Here
# first: `bash tests/gpu/prepare_carry.sh`; then run this there with
# `carry: [".whl", ".criu"]` and a timeout_s of about 560, e.g.
#   run(command="bash tests/gpu/run_on_device.sh", carry=[".whl", ".criu"], timeout_s=560)
# It prints the machine, what `dormant check` says about the device, the host<->device
# bandwidth, runs the gpu-marked tests (tests/gpu) and ends with the numbers for
# docs/measurements.md; $OUT/ gets results.jsonl, pytest.log and summary.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/dormant-gpu}
mkdir -p "$OUT"
: > "$OUT/results.jsonl"
export PYTHONUNBUFFERED=1 DORMANT_GPU_RESULTS="$OUT/results.jsonl"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ -x .criu/criu ]; then
    export DORMANT_CRIU="$PWD/.criu/criu" LD_LIBRARY_PATH="$PWD/.criu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

echo "== machine"
uname -r
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
grep -E 'MemTotal|MemAvailable' /proc/meminfo
python3 -c 'import torch, transformers, fastapi; print("torch", torch.__version__, "transformers", transformers.__version__, "fastapi", fastapi.__version__)'

echo "== dormant check (device)"
python3 -c 'from warmpool.device import device_findings
for f in device_findings(): print(("ok " if f.ok else "NO ") + f.item + ": " + f.detail)'

echo "== host<->device bandwidth"
timeout 120 python3 tests/gpu/bandwidth.py 8

echo "== gpu tests"
timeout "${GPU_TESTS_TIMEOUT:-420}" python3 -m pytest -p no:cacheprovider -m gpu -s -rs -q \
    --timeout 400 tests/gpu 2>&1 | tee "$OUT/pytest.log"
status=${PIPESTATUS[0]}

echo "== numbers"
python3 tests/gpu/summarize.py "$OUT/results.jsonl" | tee "$OUT/summary.md"
exit "$status"
