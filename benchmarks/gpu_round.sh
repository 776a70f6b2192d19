#!/usr/bin/env bash
# One device call for the decode work: GPU tests and compute-sanitizer (side by side: neither
# is timed), then the tuning sweep and the benchmark against FlashInfer (alone on the GPU).
# Run from the repository root:
#     bash benchmarks/gpu_round.sh [check] [explore] [bench]   (default: all three)
# Writes under $OUT: round.log, tests.log, sanitize.log, explore.txt, bench.json/png and
# bench-d80.json, bench-d96.json: the head sizes 80 and 96 run in processes of their own, so
# that a baseline that breaks the CUDA context there (seen once) cannot take the rest along.
# With CACHE_OUT=1 also caches.tgz (FlashInfer's JIT-compiled modules and CuPy's kernel
# cache: carry it into the next call as $CACHE_IN to skip their compilation, ~1.5 minutes).
set -uo pipefail
OUT=${OUT:-$PWD/gpu_round_out}
mkdir -p "$OUT"
LOG="$OUT/round.log"
: > "$LOG"
steps=${*:-check explore bench}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export FLASHINFER_WORKSPACE_BASE=/tmp/fiws CUPY_CACHE_DIR=/tmp/cupy_cache
if [ -n "${CACHE_IN:-}" ] && [ -f "$CACHE_IN" ]; then
    tar -xzf "$CACHE_IN" -C / && export PAGEDATTN_FLASHINFER_PREBUILT=1
    echo "caches restored from $CACHE_IN" | tee -a "$LOG"
fi
# NVRTC needs the toolkit's crt/mma.h (the pip CUDA runtime's mma.h includes it).
ls -d /usr/local/cuda*/include/crt/mma.h "$(dirname "$(dirname "$(command -v nvcc)")")"/include/crt/mma.h \
    2>&1 | tee -a "$LOG"
if [ -n "${CUDA_INCLUDE_FALLBACK:-}" ] && ! ls /usr/local/cuda/include/crt/mma.h > /dev/null 2>&1; then
    export PAGEDATTN_LAB_CUDA_INCLUDE=$CUDA_INCLUDE_FALLBACK
    echo "using $CUDA_INCLUDE_FALLBACK for crt/mma.h" | tee -a "$LOG"
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
    check)
        t0=$SECONDS
        python3 -m pytest -q -p no:cacheprovider -n 10 -m gpu tests/test_decode_gpu.py \
            tests/test_attention_gpu.py > "$OUT/tests.log" 2>&1 &
        for tool in memcheck racecheck synccheck; do
            compute-sanitizer --tool $tool --error-exitcode 9 python3 benchmarks/sanitize.py \
                > "$OUT/sanitize-$tool.log" 2>&1 &
        done
        wait
        echo "--- check: $((SECONDS - t0)) s" | tee -a "$LOG"
        tail -n 2 "$OUT/tests.log" | tee -a "$LOG"
        for tool in memcheck racecheck synccheck; do
            echo "$tool: $(grep -E 'SUMMARY|all results|MISMATCH' "$OUT/sanitize-$tool.log" \
                | tr '\n' ' ')" | tee -a "$LOG"
            { echo "=== compute-sanitizer --tool $tool"; cat "$OUT/sanitize-$tool.log"; } \
                >> "$OUT/sanitize.log"
            rm "$OUT/sanitize-$tool.log"
        done ;;
    explore) run explore bash -c "python3 benchmarks/explore.py > $OUT/explore.txt 2>&1" ;;
    bench)
        base=flashinfer-cuda-cores,flashinfer-tensor-cores,sdpa-prefill
        main=D64,D64-p64,D64-p128,D64-gqa4,D64-gqa8,D64-gqa8-p64,D64-mqa16,8x32k-gqa4,8x32k
        main=$main,1x32k-gqa4,256x128,D64-d64,D64-gqa4-d256
        run bench python3 -m pagedattn_lab.bench --out "$OUT" --prefix bench --baselines $base \
            --only $main
        for d in 80 96; do
            run bench-d$d python3 -m pagedattn_lab.bench --out /tmp/bench-d$d --prefix bench-d$d \
                --baselines $base --only D64-gqa4-d$d --no-prefill
            cp /tmp/bench-d$d/bench-d$d.json "$OUT/"
        done ;;
    esac
done
if [ -n "${CACHE_OUT:-}" ]; then
    tar -czf "$OUT/caches.tgz" -C / --exclude='*.o' --exclude='*.cu' tmp/fiws tmp/cupy_cache \
        2>/dev/null
fi
echo "=== failures"; grep -E "^FAILED|^ERROR" "$OUT/tests.log" 2>/dev/null | head -n 20
echo "=== explore"; grep -v "^copy" "$OUT/explore.txt" 2>/dev/null | tail -n 50
echo "=== bench"; grep -E "^(paged|flashinfer|BatchDecode|targets|  ok|  MISS)" "$LOG" \
    | grep -v "prefill" | cut -c1-150 | tail -n 80
