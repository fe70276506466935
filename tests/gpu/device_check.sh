#!/usr/bin/env bash
# The one prepared device check (tests/gpu/README.md). Here first: tests/gpu/prepare_carry.sh;
# then, on a lent GPU machine, with the device tool:
#   run(command="bash tests/gpu/device_check.sh", carry=[".deps/gpu-carry"], timeout_s=560)
# Steps (each bounded; all of them within DEVICE_CHECK_BUDGET seconds, default 470):
# install the carried wheels and fail fast on one import line; preflight; a probe of the
# driver API; cuda suspend/resume at 1 and 16 GiB; the reference server's sleep API; the
# pool alternating two servers that cannot both be resident (DORMANT_GPU_HOLD each, default
# 8GiB, a ballast holds the rest); CRIU of a CUDA process (skipped under gVisor); a
# bandwidth table. $OUT gets results.jsonl, log.txt, summary.md and figures.json.
#
# --dry-run: the same steps on CPU, with the FAKE libcuda (tests/gpu/fake_driver.py) in the
# probe, the gpu tests collected and skipped, CPU copies for the bandwidth: `make test` runs
# it (tests/gpu/test_device_check.py) so that this script cannot rot.
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY=()
[ "${1:-}" = "--dry-run" ] && DRY=(--dry-run)
OUT=${OUT:-/tmp/dormant-gpu}
PY=${PYTHON:-python3}
CARRY=.deps/gpu-carry
BUDGET=${DEVICE_CHECK_BUDGET:-470}
mkdir -p "$OUT"
: > "$OUT/results.jsonl"
: > "$OUT/log.txt"
export OUT PYTHONUNBUFFERED=1 DORMANT_GPU_RESULTS="$OUT/results.jsonl"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)

# ---- what the device lacks: the carried wheels and CRIU ----------------------------------
if [ ${#DRY[@]} -eq 0 ] && [ -f "$CARRY/requirements.txt" ]; then
    site=/tmp/dormant-site
    if "$PY" -m pip --version > /dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" \
            --find-links "$CARRY/whl" -r "$CARRY/requirements.txt" > "$OUT/install.log" 2>&1
    else
        "$PY" tests/gpu/device_check.py install "$CARRY/whl" "$CARRY/requirements.txt" "$site" \
            > "$OUT/install.log" 2>&1
    fi || { echo "device_check: installing the carried wheels failed: $(tail -1 "$OUT/install.log")"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:$site"
fi
if [ ${#DRY[@]} -eq 0 ] && [ -f "$CARRY/criu.tar.xz" ]; then
    mkdir -p /tmp/dormant-criu && tar -C /tmp/dormant-criu -xJf "$CARRY/criu.tar.xz"
    # criu's libraries reach criu alone (snapshots/criu.py), not the servers of the run
    export DORMANT_CRIU=/tmp/dormant-criu/criu/criu DORMANT_CRIU_LIBRARY_PATH=/tmp/dormant-criu/criu/lib
fi
imports='from tests.gpu.carry_set import IMPORTS; exec("import " + IMPORTS)'
[ ${#DRY[@]} -eq 0 ] && imports="$imports; import torch, pynvml"
if ! err=$("$PY" -c "$imports" 2>&1); then
    echo "device_check: an import fails, nothing was run: $(echo "$err" | tail -1)"
    exit 1
fi

# ---- the steps -----------------------------------------------------------------------------
failed=0
step() {  # NAME LIMIT_S COMMAND...: run it within its limit and what is left of the budget
    local name=$1 limit=$2 rc t0 left
    shift 2
    left=$((BUDGET - ($(date +%s) - started)))
    if [ "$left" -lt 20 ]; then
        echo "== $name: not run, the time budget is spent"
        rc=125
    else
        [ "$limit" -gt "$left" ] && limit=$left
        echo "== $name (at most ${limit}s)"
        t0=$(date +%s)
        timeout --kill-after=10 "$limit" "$@" > "$OUT/step.log" 2>&1
        rc=$?
        grep -E '^(FAILED|ERROR|SKIPPED|E  )|passed|failed|skipped|Error|error:' "$OUT/step.log" \
            | tail -n 6 | cut -c1-300 | sed 's/^/   /'
        { echo "== $name"; cat "$OUT/step.log"; } >> "$OUT/log.txt"
        rm -f "$OUT/step.log"
    fi
    [ "$rc" -ne 0 ] && failed=1 && echo "   $name: exit $rc"
    "$PY" -c 'import sys; from tests.gpu.plan import record
record(what="step", step=sys.argv[1], rc=int(sys.argv[2]), seconds=int(sys.argv[3]))' \
        "$name" "$rc" "$(($(date +%s) - ${t0:-$(date +%s)}))" > /dev/null
    t0=
}
gpu_pytest=("$PY" -m pytest -p no:cacheprovider -m gpu -rs -q --timeout 300)

step preflight 60 "$PY" tests/gpu/device_check.py preflight "${DRY[@]}"
step probe 90 "$PY" tests/gpu/device_check.py probe "${DRY[@]}"
step cuda-suspend-resume 150 "${gpu_pytest[@]}" tests/gpu/test_cuda_checkpoint.py
step refserver-sleep 150 "${gpu_pytest[@]}" tests/gpu/test_refserver_gpu.py -k sleep_frees
step pool 300 env DORMANT_GPU_HOLD="${DORMANT_GPU_HOLD:-8GiB}" "${gpu_pytest[@]}" \
    tests/gpu/test_pool_gpu.py -k "alternates or own_namespace"
step criu-cuda 150 "${gpu_pytest[@]}" tests/gpu/test_pool_gpu.py -k criu
step bandwidth 90 "$PY" tests/gpu/bandwidth.py 8 "${DRY[@]}"

echo "== summary ($(($(date +%s) - started))s)"
"$PY" tests/gpu/summarize.py "$OUT/results.jsonl" --out "$OUT" || failed=1
exit "$failed"
