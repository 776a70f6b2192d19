#!/usr/bin/env bash
# Every GPU check in ONE device call (CI has no GPU). Run from the repository root's parent
# or anywhere:
#     bash .ci/gpu_check.sh          # everything (about 15 minutes on an H200)
#     bash .ci/gpu_check.sh lean     # what fits one 10-minute call: GPU tests and memcheck,
#                                    # then the benchmarks (decode, compressed, prefill, serving)
# Writes under $OUT: gpu_check.log (every step's output) and results.tgz (each step's full
# log in logs/, the benchmarks' JSON/PNG in bench/ and serve/). GPU_CHECK_DEADLINE (seconds,
# default 500 in lean mode) skips the timing steps that would start after it, so a call with
# a time limit still brings its log and results back. GPU_CHECK_SKIP (step names of either
# phase, e.g. "serve bench-d80 flashinfer-jit") leaves steps out; GPU_CHECK_PYTEST_LIMIT
# (seconds, default 400) and GPU_CHECK_WORKERS (default 8) bound the GPU tests,
# GPU_CHECK_TESTS (default "tests") picks them (verbose: a test the limit cut off has no
# PASSED line in logs/pytest-gpu.log);
# GPU_CHECK_EXTRA ("tool:script" pairs) adds sanitizer runs; GPU_CHECK_TOOLS (e.g. "memcheck
# racecheck") sets the sanitizer tools.
# The GPU tests' workers each run NumPy's BLAS (the float64 oracle): two threads each, not one
# per core each (8 workers x 16 threads made the long prefill oracles crawl).
# Phase 1 checks correctness and times nothing, so its steps run side by side, and FlashInfer's
# JIT builds (a minute of CPU) run beside them. Phase 2 times, one step at a time, GPU alone.
# The device's python3 has torch, cupy, pytest, tqdm, matplotlib, transformers; the
# repository is not installed there, so everything runs from the repository root.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-full}
OUT=${OUT:-$PWD/gpu_check_out}
RES="$OUT/results"
mkdir -p "$RES/logs"
DEADLINE=${GPU_CHECK_DEADLINE:-$([ "$MODE" = lean ] && echo 500 || echo 100000)}
HARD_STOP=$((DEADLINE + 80))   # a timing step still running then is stopped
LOG="$OUT/gpu_check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1
failed=()

left_out() {   # left_out NAME: true (and logged) when GPU_CHECK_SKIP names the step
    [[ " ${GPU_CHECK_SKIP:-} " == *" $1 "* ]] || return 1
    echo "--- $1: left out (GPU_CHECK_SKIP)" | tee -a "$LOG"
}

step() {   # step NAME COMMAND...: run, log, remember failures, keep going
    local name=$1; shift
    left_out "$name" && return
    if [ $SECONDS -ge "$DEADLINE" ]; then
        echo "--- $name: skipped (past GPU_CHECK_DEADLINE=$DEADLINE s)" | tee -a "$LOG"
        failed+=("$name(skipped)"); return
    fi
    echo "=== $name: $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout $((HARD_STOP - SECONDS)) "$@" >> "$LOG" 2>&1
    local rc=$?
    echo "--- $name: rc=$rc, $((SECONDS - t0)) s" | tee -a "$LOG"
    [ $rc -eq 0 ] || failed+=("$name")
}

side_by_side() {   # side_by_side "NAME|COMMAND" ...: run together, log each, then report
    local pids=() names=() spec
    for spec in "$@"; do
        left_out "${spec%%|*}" && continue
        names+=("${spec%%|*}")
        bash -c "${spec#*|}" > "$RES/logs/${spec%%|*}.log" 2>&1 &
        pids+=($!)
    done
    local i
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}"
        local rc=$?
        { echo "=== ${names[$i]}"; tail -n 25 "$RES/logs/${names[$i]}.log"
          echo "--- ${names[$i]}: rc=$rc"; } >> "$LOG"
        echo "--- ${names[$i]}: rc=$rc"
        [ $rc -eq 0 ] || failed+=("${names[$i]}")
    done
}

# The device image has no Jupyter stack: the wheels travel in .whl/ (see README, "GPU
# checks"). The repository root goes on PYTHONPATH so notebook kernels import the package.
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >> "$LOG" 2>&1 || echo "wheel install failed" | tee -a "$LOG"
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
    echo "no .whl/ carried: FlashInfer baselines and notebook steps will be missing" | tee -a "$LOG"
fi
step nvidia-smi nvidia-smi

# Phase 1: correctness (nothing timed). compute-sanitizer on every kernel's launch script.
checks=("pytest-gpu|timeout ${GPU_CHECK_PYTEST_LIMIT:-400} env OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python3 -m pytest -m gpu ${GPU_CHECK_TESTS:-tests} -v -p no:cacheprovider -n ${GPU_CHECK_WORKERS:-8} -rf --durations=25"
        "flashinfer-jit|timeout 300 python3 benchmarks/prebuild_flashinfer.py")
tools="memcheck"
[ "$MODE" = lean ] || tools="memcheck racecheck synccheck"
tools=${GPU_CHECK_TOOLS:-$tools}
for extra in ${GPU_CHECK_EXTRA:-}; do   # "tool:script" pairs on top, e.g. "synccheck:sanitize_tc"
    checks+=("${extra#*:}-${extra%%:*}|timeout 200 compute-sanitizer --tool ${extra%%:*} --error-exitcode 9 python3 benchmarks/${extra#*:}.py")
done
for tool in $tools; do
    for script in sanitize sanitize_tc sanitize_rows sanitize_mqa sanitize_prefill sanitize_quant sanitize_engine sanitize_mma_ptx; do
        checks+=("$script-$tool|timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 python3 benchmarks/$script.py")
    done
done
side_by_side "${checks[@]}"
if [ "$MODE" != lean ]; then
    # The whole suite with a GPU present (checks and notebooks then take the GPU path), and
    # the lessons under nbval. MPLBACKEND must not reach the notebook kernels, or their
    # figures never reach the cell outputs nbval compares.
    step pytest-all python3 -m pytest tests -q -p no:cacheprovider -n 8 --dist loadfile
    step notebooks-gpu python3 -m pytest --nbval --nbval-current-env \
        notebooks solutions -q -p no:cacheprovider -n 4 --dist loadfile
fi

# Phase 2: timings, one at a time, most wanted first. The host rows (run(), the one-shot call)
# time the host too, so nothing may compile beside them: a FlashInfer JIT build that its step's
# timeout cut off leaves its compilers running (timeout stops python, not ninja's children;
# session 4's one-shot row read 1.33x its kernel, 1.15x on a quiet host). Stop them, and a
# prebuild still running (it starts the next build when one is stopped).
if pkill -f -e 'prebuild_flashinfer|ninja|nvcc|cicc|ptxas' >> "$LOG" 2>&1; then
    echo "stopped compilers left running by phase 1" | tee -a "$LOG"; sleep 2
fi
export MPLBACKEND=Agg
lean_flags=(); [ "$MODE" = lean ] && lean_flags=(--no-prefill)
step bench timeout 200 python3 -m pagedattn_lab.bench --out "$RES/bench" "${lean_flags[@]}" \
    --only D64,D64-p64,D64-p128,D64-gqa4,D64-gqa8,D64-gqa8-p64,D64-mqa16,8x32k-gqa4,8x32k,1x32k-gqa4,256x128,D64-d64,D64-gqa4-d256
step bench-quant timeout 150 python3 -m pagedattn_lab.bench.quant --out "$RES/bench"
step bench-prefill timeout 200 python3 -m pagedattn_lab.bench.prefill --out "$RES/bench"
step serve timeout 200 python3 benchmarks/serve_bench.py --kv-gib 1.0 --out "$RES/serve"
# Head sizes 80 and 96 in processes of their own, as before the bench skipped FlashInfer 0.6
# there (its kernels make an illegal address that takes the CUDA context along); in lean mode
# without baselines (none runs on these rows, and FlashInfer's JIT costs a minute).
[ "$MODE" = lean ] && lean_flags+=(--no-baselines)
for d in 80 96; do
    step "bench-d$d" timeout 90 python3 -m pagedattn_lab.bench --out "$RES/bench" \
        --prefix "bench-d$d" --only "D64-gqa4-d$d" --no-prefill "${lean_flags[@]}"
done
# The open speed targets again with the L2 left clean (bench.timing: the write flush's
# write-back costs every decode row 7-10 us; the targets are judged by the write flush).
step bench-quant-read timeout 100 python3 -m pagedattn_lab.bench.quant \
    --out "$RES/bench/read-flush" --l2-flush read
step bench-d96-read timeout 90 python3 -m pagedattn_lab.bench --out "$RES/bench/read-flush" \
    --prefix bench-d96 --only D64-gqa4-d96 --no-prefill --no-baselines --l2-flush read
tar -czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$RES"

echo "=== steps:"
grep -- "^--- " "$LOG"
if [ ${#failed[@]} -eq 0 ]; then
    echo "gpu_check: all steps passed"
else
    echo "gpu_check: FAILED: ${failed[*]}"
    exit 1
fi
