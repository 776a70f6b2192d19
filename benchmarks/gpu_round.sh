#!/usr/bin/env bash
# One device call for the decode work: GPU tests, compute-sanitizer, benchmark against
# FlashInfer, tuning variants. Run from the repository root:
#     bash benchmarks/gpu_round.sh [tests] [sanitize] [bench] [explore]   (default: all)
# Writes under $OUT: round.log, bench.json/png, explore.txt, sanitize.log, and caches.tgz
# (FlashInfer's JIT-compiled modules and CuPy's kernel cache, to carry into the next call as
# $CACHE_IN, which saves their compilation: about a minute).
set -uo pipefail
OUT=${OUT:-$PWD/gpu_round_out}
mkdir -p "$OUT"
LOG="$OUT/round.log"
: > "$LOG"
steps=${*:-tests sanitize bench explore}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export FLASHINFER_WORKSPACE_BASE=/tmp/fiws CUPY_CACHE_DIR=/tmp/cupy_cache
if [ -n "${CACHE_IN:-}" ] && [ -f "$CACHE_IN" ]; then
    tar -xzf "$CACHE_IN" -C / && export PAGEDATTN_FLASHINFER_PREBUILT=1
    echo "caches restored from $CACHE_IN" | tee -a "$LOG"
fi
run() {   # run NAME COMMAND...
    local name=$1; shift
    echo "=== $name: $*" | tee -a "$LOG"
    local t0=$SECONDS
    "$@" >> "$LOG" 2>&1
    echo "--- $name: rc=$?, $((SECONDS - t0)) s" | tee -a "$LOG"
}
nvidia-smi -L | tee -a "$LOG"
for s in $steps; do
    case $s in
    tests) run tests python3 -m pytest -q -p no:cacheprovider -n 8 -m gpu \
               tests/test_decode_gpu.py tests/test_attention_gpu.py ;;
    sanitize)
        : > "$OUT/sanitize.log"
        for tool in memcheck racecheck synccheck; do
            echo "=== $tool" >> "$OUT/sanitize.log"
            run "sanitize-$tool" bash -c "compute-sanitizer --tool $tool --error-exitcode 9 \
                python3 benchmarks/sanitize.py >> $OUT/sanitize.log 2>&1"
            tail -n 3 "$OUT/sanitize.log" | tee -a "$LOG"
        done ;;
    bench) run bench python3 -m pagedattn_lab.bench --out "$OUT" --prefix bench \
               --baselines flashinfer-cuda-cores,flashinfer-tensor-cores,sdpa-prefill ;;
    explore) run explore bash -c "python3 benchmarks/explore.py > $OUT/explore.txt 2>&1" ;;
    esac
done
tar -czf "$OUT/caches.tgz" -C / --exclude='*.o' --exclude='*.cu' tmp/fiws tmp/cupy_cache \
    2>/dev/null
ls -la "$OUT" | tee -a "$LOG"
echo "=== test summary"; grep -E "passed|failed|error" "$LOG" | tail -n 5
echo "=== explore"; grep -v "^copy" "$OUT/explore.txt" 2>/dev/null | tail -n 60
echo "=== bench (end)"; grep -A80 "device copy" "$LOG" | tail -n 70
