#!/usr/bin/env bash
# Every GPU check in ONE device call (CI has no GPU). Run from anywhere:
#     bash .ci/gpu_check.sh            # results under $OUT (the device tool sets it)
# Writes: $OUT/gpu_check.log (all steps' output), $OUT/bench/bench.json, bench.png, prefill.json
# and the compressed-page rows.
# The device's python3 has torch, cupy, pytest, tqdm, matplotlib; the repository is not
# installed there, so everything runs from the repository root.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
failed=()

step() {   # step NAME COMMAND...: run, log, remember failures, keep going
    local name=$1; shift
    echo "=== $name: $*" | tee -a "$LOG"
    local t0=$SECONDS
    "$@" >> "$LOG" 2>&1
    local rc=$?
    echo "--- $name: rc=$rc, $((SECONDS - t0)) s" | tee -a "$LOG"
    [ $rc -eq 0 ] || failed+=("$name")
}

# The device image has no Jupyter stack: the wheels travel in .whl/ (see README, "GPU
# checks"). The repository root goes on PYTHONPATH so notebook kernels import the package.
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >> "$LOG" 2>&1 || echo "wheel install failed" | tee -a "$LOG"
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
    echo "no .whl/ carried: notebook steps will fail to import nbval" | tee -a "$LOG"
fi

step nvidia-smi nvidia-smi
step pytest-gpu python3 -m pytest -m gpu tests -q -p no:cacheprovider
# The whole suite again with a GPU present (checks and notebooks then take the GPU path).
step pytest-all python3 -m pytest tests -q -p no:cacheprovider -n 8 --dist loadfile
for tool in memcheck racecheck synccheck; do
    for script in sanitize sanitize_prefill sanitize_quant; do
        step "$script-$tool" compute-sanitizer --tool "$tool" --error-exitcode 9 \
            python3 "benchmarks/$script.py"
    done
done

# Lessons and solutions under nbval, kernels on the GPU. MPLBACKEND must not reach the
# notebook kernels, or their figures never reach the cell outputs nbval compares.
step notebooks-gpu env -u MPLBACKEND python3 -m pytest --nbval --nbval-current-env \
    notebooks solutions -q -p no:cacheprovider -n 4 --dist loadfile

step bench python3 -m pagedattn_lab.bench --out "$OUT/bench"
step bench-prefill python3 -m pagedattn_lab.bench.prefill --out "$OUT/bench"
step bench-quant python3 -m pagedattn_lab.bench.quant --out "$OUT/bench"

echo "=== end of the log (bench table):"
tail -n 45 "$LOG"
echo "=== steps:"
grep -- "^--- " "$LOG"
if [ ${#failed[@]} -eq 0 ]; then
    echo "gpu_check: all steps passed"
else
    echo "gpu_check: FAILED: ${failed[*]}"
    exit 1
fi
