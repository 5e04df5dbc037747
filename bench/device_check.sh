#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (an H100 or H200), under 7 minutes.
#
#   bash bench/device_check.sh            # from the repository root, or from anywhere
#
# Steps, each with its own time limit; a step that fails or runs out of time is
# recorded and the script goes on:
#   info       nvidia-smi, versions, `liam-gpu info`, compute-sanitizer/nvcc versions
#   gpu-tests  python3 -m pytest -q -m gpu tests/            (the tier-3 tests)
#   tensorcore python3 -m pytest bench/bench_transform.py -k "16bit or tf32" -m gpu
#              (issue 17: 16-bit and TF32 bias + GELU against torch, fraction of the 16-bit peak)
#   memcheck   compute-sanitizer --tool memcheck on bench/sanitize_cases.py
#              (every kernel family once on small inputs, CuPy's pool off)
#   bench      python3 -m liam_gpu.benchmarks --backend all --out $OUT/bench
#              (interrupted at its limit, it still reports what finished)
#   racecheck  compute-sanitizer --tool racecheck on the small cases, with the time left
#
# Everything is written under $OUT (the device tool's output folder), or
# bench/results/<UTC date-time> when $OUT is unset: one <step>.log per step and
# summary.txt, which is also printed last.
#
# The machine has python3 with cupy, torch, pytest and pytest-benchmark and no
# package registry: nothing is installed here; the working tree is used through
# PYTHONPATH. Optional peers that are missing show up as skipped benchmarks.
# Knobs: PYTHON (default python3), DEVICE_CHECK_BUDGET (seconds for the whole
# script, default 380), BENCH_ARGS (default "--backend all").

set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$(pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$ROOT/bench/results/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
BUDGET=${DEVICE_CHECK_BUDGET:-380}
KILL_GRACE=20   # seconds between the INT at a step's limit and a KILL (the bench step reports then)
START=$(date +%s)
: > "$SUMMARY"

# step NAME SECONDS COMMAND...: run COMMAND with a limit of SECONDS (less if the
# budget is nearly spent), output to NAME.log, one line into the summary.
step() {
    local name=$1 want=$2
    shift 2
    local left=$(( START + BUDGET - $(date +%s) - KILL_GRACE ))
    local limit=$(( want < left ? want : left ))
    if (( limit < 10 )); then
        printf '%-10s SKIPPED   no time left in the %ss budget\n' "$name" "$BUDGET" | tee -a "$SUMMARY"
        return
    fi
    echo "=== $name (limit ${limit}s): $*"
    local began=$(date +%s)
    timeout -s INT -k "$KILL_GRACE" "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    local took=$(( $(date +%s) - began ))
    local status=OK
    if (( rc == 124 || rc == 137 )); then status=TIMEOUT; elif (( rc != 0 )); then status=FAILED; fi
    tail -n 25 "$OUT_DIR/$name.log"
    printf '%-10s %-9s rc=%-3s %4ss  %s\n' "$name" "$status" "$rc" "$took" "$name.log" | tee -a "$SUMMARY"
}

SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)

info() {
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw \
        --format=csv
    "$PY" --version
    "$PY" -m pip list 2>/dev/null | grep -i -E '^(cupy|torch|numpy|scipy|pytest|scikit-learn|matplotlib|fbpca|cuda)' || true
    "$PY" -m liam_gpu.cli info
    if [ -n "$SANITIZER" ]; then "$SANITIZER" --version | tail -n 2; else echo "compute-sanitizer: not found"; fi
    command -v nvcc > /dev/null && nvcc --version | tail -n 2
    git -C "$ROOT" log -1 --format='commit %H %cd' 2>/dev/null || echo "commit: not a git checkout"
    git -C "$ROOT" status --short 2>/dev/null | head -n 20
}
export -f info
export PY SANITIZER ROOT

step info 20 bash -c info
step gpu-tests 95 "$PY" -m pytest -q -m gpu tests/ -p no:cacheprovider -rs \
    --junitxml="$OUT_DIR/gpu-tests.xml"
step tensorcore 60 "$PY" -m pytest -q bench/bench_transform.py -k "16bit or tf32" -m gpu -p no:cacheprovider \
    --benchmark-min-rounds=5 --benchmark-max-time=0.2 --benchmark-columns=median,rounds \
    --benchmark-json="$OUT_DIR/tensorcore.json"
if [ -n "$SANITIZER" ]; then
    step memcheck 60 "$SANITIZER" --tool memcheck --leak-check no --error-exitcode 86 --print-limit 40 \
        "$PY" bench/sanitize_cases.py --device cuda
else
    printf '%-10s SKIPPED   compute-sanitizer not found\n' memcheck | tee -a "$SUMMARY"
fi
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
step bench 90 "$PY" -m liam_gpu.benchmarks ${BENCH_ARGS:---backend all} --out "$OUT_DIR/bench"
if [ -n "$SANITIZER" ]; then
    step racecheck 40 "$SANITIZER" --tool racecheck --error-exitcode 86 --print-limit 40 \
        "$PY" bench/sanitize_cases.py --device cuda --no-heavy
fi
nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > "$OUT_DIR/clocks-after.csv" 2>&1

# The summary goes last: the device tool returns only the end of the output.
if [ -f "$OUT_DIR/bench/results.md" ]; then
    echo
    sed -n '/^## Ceilings/,/^## Skipped/p' "$OUT_DIR/bench/results.md" | grep -v '^## Skipped' | head -n 120
fi
echo
echo "=== device_check summary ($(( $(date +%s) - START ))s of ${BUDGET}s; logs in $OUT_DIR)"
cat "$SUMMARY"
