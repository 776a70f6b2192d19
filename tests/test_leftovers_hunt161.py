"""Hunt 161: plans, wrappers and lessons, the leftovers.

- prefill_tiles.cuh's look-ahead (lookup_begin / lookup_end) formed `key = k_first + r` for
  every slot of a thread, those past the tile too (r up to THREADS * SLOTS_PER_THREAD - 1,
  discarded): at the plan's bound (the tile's last key 2^31 - 1, a 128-thread variant over
  32-key tiles) that sum passed 2^31 - 1, signed overflow. decode_tc_tiles.cuh's tile_pages
  did the same for a copier's chunks past the tile (the plans keep decode_tc.cu's tokens a
  partition short of the bound, so no plan reached it there). Both now form the index only
  for a slot or chunk of the tile; checked below with the functions' own text compiled with
  the compiler's signed-overflow trap.
- decode_tc.cu (compressed pages): a length past what the automatic partitions count in int32
  (~1.98e9 tokens with the CPU executor's 12) was refused without a word of what to do; the
  kernel merges up to tc_max_parts partitions, and num_splits takes it further. The refusal
  names num_splits where it helps, else the kernel's limit and kernel='simt'.
- lesson 13's head split said "KV heads 0-0" for a GPU that holds one head.
- decode_simt_plan.choose_partitions (which lessons call) checked the simt kernel's int32
  counts itself; the plan now does, as it does the tensor cores' and the prefill's.
- the grading's "count on the CPU, launch, compare" step is one helper (count_then_check).
- quant.decode checked a torch tensor's storage twice.
"""
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pagedattn_lab import BatchDecodeWrapper, kernels, quant  # noqa: E402
from pagedattn_lab.decode_plan import choose_partitions  # noqa: E402
from pagedattn_lab.grading import puzzle_runner  # noqa: E402
from pagedattn_lab.grading.report import Mismatch  # noqa: E402
from pagedattn_lab.viz.tensor_parallel import plot_head_split  # noqa: E402

INT32_MAX = 2**31 - 1
GRADING = Path(puzzle_runner.__file__).parent


# ---- 1. the kernels' discarded indices, under the signed-overflow trap ----------------------
def _function_text(source: str, head: str) -> str:
    """The text of the function whose declaration starts with `head`, to its closing brace."""
    start = source.index(head)
    depth, i = 0, source.index("{", start)
    while True:
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        if depth == 0:
            return source[start:i + 1]
        i += 1


def _run_trapped(tmp_path, code: str, *args: int) -> subprocess.CompletedProcess:
    """Compile `code` (C++) with signed overflow trapping, run it with `args`."""
    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src, exe = tmp_path / "harness.cpp", tmp_path / "harness"
    src.write_text(code)
    subprocess.run([cxx, "-O1", "-w", "-fsanitize=signed-integer-overflow",
                    "-fsanitize-undefined-trap-on-error", str(src), "-o", str(exe)], check=True)
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)


PREFILL_HARNESS = r'''
#include <cstdio>
#include <cstdlib>
#define __device__
struct { unsigned x; } threadIdx;
#define THREADS 128        // 4 warps (mw4r2k32: the plan's chunk variant at head_dim 32)
#define KV_TILE 32
#define SLOTS_PER_THREAD ((KV_TILE + THREADS - 1) / THREADS)
struct Pipeline {
    int* slots;
    const int* table;
    int page_size, kv_end;
    int page_of[SLOTS_PER_THREAD];
    FUNCTIONS
};
int main(int argc, char** argv)
{
    int table[2] = {0, 1}, slots[KV_TILE];   // pages of 2^30: a key's slot is the key
    Pipeline p;
    p.slots = slots;
    p.table = table;
    p.page_size = 1 << 30;
    p.kv_end = atoi(argv[2]);
    const int k_first = atoi(argv[1]);
    for (unsigned t = 0; t < THREADS; ++t) {
        threadIdx.x = t;
        p.lookup_begin(k_first);
        p.lookup_end(k_first, 0);
    }
    for (int r = 0; r < KV_TILE; ++r) printf("%d\n", slots[r]);
}
'''


def test_prefill_look_ahead_forms_no_key_past_int32(tmp_path):
    """The plan takes 2^31 - 64 keys on 2 stages of 32 (test_int32_bounds_hunt150): the last
    tile's look-ahead reads keys 2^31 - 32 .. 2^31 - 1. A thread's slots past the tile formed
    keys up to 2^31 + 95 (trapped before the fix); now every slot of the tile is its key, and
    those past kv_end are -1."""
    source = kernels.source("prefill_tiles.cuh")
    functions = "\n".join(_function_text(source, f"__device__ void {name}(")
                          for name in ("lookup_begin", "lookup_end"))
    code = PREFILL_HARNESS.replace("FUNCTIONS", functions)
    k_first = 2**31 - 32
    run = _run_trapped(tmp_path, code, k_first, INT32_MAX)
    assert run.returncode == 0, f"trapped (signed overflow?): {run.returncode} {run.stderr}"
    keys = k_first + np.arange(32)
    assert [int(x) for x in run.stdout.split()] == np.where(keys < INT32_MAX, keys, -1).tolist()


DECODE_HARNESS = r'''
#include <cstdio>
#include <cstdlib>
#define __device__
constexpr int CP_THREADS = 128, CP_TOKENS = 64, CHUNKS = 1;   // decode_tc.cu, int8, head_dim 16
constexpr int TILE_COPIES = (CP_TOKENS * CHUNKS + CP_THREADS - 1) / CP_THREADS;
FUNCTIONS
int main(int argc, char** argv)
{
    const int table[2] = {0, 1};
    const int t0 = atoi(argv[1]), end = atoi(argv[2]);
    for (int cid = 0; cid < CP_THREADS; ++cid) {
        int pg[TILE_COPIES];
        tile_pages(pg, table, t0, end, 1 << 30, 30, cid);
        for (int i = 0; i < TILE_COPIES; ++i) printf("%d\n", pg[i]);
    }
}
'''


def test_decode_tile_pages_forms_no_token_past_int32(tmp_path):
    """A tile of 64 tokens ending at 2^31 - 1 copied by 128 threads of one chunk per row: the
    threads past the tile formed tokens up to 2^31 + 63 (trapped before the fix)."""
    source = kernels.source("decode_tc_tiles.cuh")
    code = DECODE_HARNESS.replace("FUNCTIONS", _function_text(
        source, "__device__ inline void tile_pages("))
    run = _run_trapped(tmp_path, code, 2**31 - 64, INT32_MAX)
    assert run.returncode == 0, f"trapped (signed overflow?): {run.returncode} {run.stderr}"
    pages = [int(x) for x in run.stdout.split()]
    assert pages == [1] * 63 + [-1] * 65   # (token 2^31 - 1 is past `end`; page 1 of 2^30)


def test_the_cpu_executor_looks_ahead_at_the_bound_with_more_threads_than_keys():
    """The look-ahead itself on the CPU executor with 128 threads over 32-key tiles (the
    threads past the tile look nothing up), at the last tile the plan's bound allows."""
    from pagedattn_lab.cpu import RawKernel
    from pagedattn_lab.prefill_plan import Variant
    from tests.test_int32_bounds_hunt150 import LOOKAHEAD_KERNEL
    includes = ("common.cuh", "kv_quant.cuh", "mma_ptx.cuh", "prefill_tc_params.cuh")
    source = "#include <cuda_fp16.h>\n" + "".join(
        kernels.source(h) + "\n" for h in includes) + re.sub(
        r'#include "(\w+\.cuh)"', lambda m: kernels.source(m[1]), LOOKAHEAD_KERNEL)
    variant = Variant.parse("mw4r2k32")
    assert (variant.warps, variant.kv_tile, variant.stages) == (4, 32, 2)
    kern = RawKernel(source, "lookahead", options=variant.options(32) + (
        "-DELEM=__half", "-DKV_QUANT=0", "-DCACHE_T=__half", "-DPER_TOKEN_SCALES=0"))
    table = np.arange(4096, dtype=np.int32)
    page = 2**19
    pages = np.full(128, 9, np.int32)
    # the plan's bound, 2^31 - 64 keys: the last tile (k0 2^31 - 96) looks up 2^31 - 32 ..
    kern((1,), (128,), (table, np.int32(2**31 - 96), np.int32(2**31 - 64), np.int32(page), pages))
    assert (pages == -1).all()              # ... all past kv_end: nothing looked up
    pages[:] = 9                            # k0 2^31 - 128: keys 2^31 - 64 .., 16 before kv_end
    kern((1,), (128,), (table, np.int32(2**31 - 128), np.int32(2**31 - 48), np.int32(page),
                        pages))
    want = np.where(np.arange(32) < 16, (2**31 - 64) // page, -1)
    assert pages[:32].tolist() == want.tolist() and (pages[32:] == -1).all()


# ---- 2. decode_tc.cu's refusal says what to do --------------------------------------------
WIDE_ROW = np.zeros((1, 4096), np.int32)
PAGE = 2**19


def plan_codes(length, w=None, kernel="tensor_core", **kw):
    return (w or BatchDecodeWrapper()).plan(WIDE_ROW, np.array([length], np.int32), 8, 1, 64,
                                            PAGE, "float16", kernel=kernel, kv_dtype="fp8_e4m3",
                                            **kw)


def test_wmma_refusal_names_the_num_splits_that_fits(monkeypatch):
    """2e9 tokens in the automatic partitions (12 here) was refused with "up to 1980816960
    tokens with these partitions" and nothing more; 14 partitions count it in int32."""
    monkeypatch.setattr(BatchDecodeWrapper, "run", lambda *a, **k: pytest.fail("launched"))
    w = plan_codes(1000)
    before = dict(w.__dict__)
    with pytest.raises(ValueError, match=r"^seq_lens\[0\]: 2000000000 tokens in partitions of "
                                         r"\d+: the tensor-core kernel \(decode_tc\.cu, .*; "
                                         r"num_splits=14 cuts them short enough$"):
        plan_codes(2_000_000_000, w)
    assert all(w.__dict__[k] is v for k, v in before.items()) and \
        w.__dict__.keys() == before.keys()   # the previous plan kept
    assert plan_codes(2_000_000_000, num_splits=14).tc_config.source == "decode_tc"
    with pytest.raises(ValueError, match=r"num_splits=14 cuts them short enough$"):
        plan_codes(2_000_000_000, num_splits=13)


def test_wmma_refusal_past_its_merge_names_the_limit_and_the_simt_kernel():
    w = BatchDecodeWrapper()
    most = 2145887005   # 1344 partitions (tc_max_parts here): seq_len + part_len - 1 in int32
    assert plan_codes(most, num_splits=1344).max_parts == 1344
    for length in (most + 1, INT32_MAX + 1 - 2048):   # (past it: test_mends_hunt173)
        with pytest.raises(ValueError, match=rf"^seq_lens\[0\]: {length} tokens .*; the kernel "
                                             rf"merges at most 1344 partitions of a sequence, "
                                             rf"so it counts at most {most} tokens: plan with "
                                             rf"kernel='simt' for longer sequences$"):
            plan_codes(length, w)
        assert w.kernel is None
    assert plan_codes(most + 1, kernel="simt").kernel == "simt"   # what the message offers


# ---- 3. lesson 13's heading -----------------------------------------------------------------
@pytest.mark.parametrize("heads, kv_words, q_words", [
    ((8, 2), ["KV head 0", "KV head 1"], ["query heads 0-3", "query heads 4-7"]),
    ((2, 2), ["KV head 0", "KV head 1"], ["query head 0", "query head 1"]),
    ((8, 4), ["KV heads 0-1", "KV heads 2-3"], ["query heads 0-3", "query heads 4-7"]),
])
def test_head_split_heading_names_one_head_as_one(heads, kv_words, q_words):
    fig = plot_head_split(*heads, 2, [2, 3])
    try:
        titles = [next(t.get_text() for t in ax.texts if t.get_text().startswith("GPU "))
                  for ax in fig.axes]
    finally:
        plt.close(fig)
    assert titles == [f"GPU {r}: {q_words[r]}, {kv_words[r]}" for r in range(2)], titles


# ---- 4. the simt kernel's int32 check at the plan site ------------------------------------------
def test_choose_partitions_is_a_pure_helper():
    """A lesson's "how would 2^31 - 1 tokens be cut" gets its answer; the plan refuses."""
    assert choose_partitions([INT32_MAX], 8, num_sms=132, num_splits=1) == (INT32_MAX, 1)
    w = BatchDecodeWrapper().plan(np.zeros((1, 1), np.int32), np.array([8], np.int32), 8, 8,
                                  64, 16, "float16", kernel="simt")
    before = dict(w.__dict__)
    with pytest.raises(ValueError, match=r"^seq_lens\[0\]: 2147483647 tokens in one partition: "
                                         r"the simt kernel counts"):
        w.plan(WIDE_ROW, np.array([INT32_MAX], np.int32), 8, 8, 64, PAGE, "float16",
               kernel="simt", num_splits=1)
    assert all(w.__dict__[k] is v for k, v in before.items()) and \
        w.__dict__.keys() == before.keys()   # (no attribute added either)


# ---- 5. count, launch, compare: once ----------------------------------------------------------
def test_the_counted_run_is_compared_in_one_place():
    calls = {p.name: len(re.findall(r"\bsame_work\(", p.read_text()))
             for p in GRADING.glob("*.py")}
    assert {k: v for k, v in calls.items() if v} == {"puzzle_runner.py": 2}, calls  # def + call


def test_count_then_check_counts_on_copies_and_compares():
    args = [np.zeros(3, np.float32), 7]

    def count(host):
        host[0][:] = 1.0
        return "counts"
    got, counts = puzzle_runner.count_then_check(count, args, [0])
    assert counts == "counts" and got[0].tolist() == [1, 1, 1] and args[0].tolist() == [0, 0, 0]
    assert puzzle_runner.count_then_check(count, args, [0], lambda: [np.ones(3)])[1] == "counts"
    with pytest.raises(Mismatch, match=r"output 0: the checked launch's values differ"):
        puzzle_runner.count_then_check(count, args, [0], lambda: [np.zeros(3)],
                                       "the checked launch's")


# ---- 6. quant.decode checks once ---------------------------------------------------------------
def test_quant_decode_checks_a_torch_tensors_storage_once(monkeypatch):
    torch = pytest.importorskip("torch")
    seen = []
    real = quant.check_storage
    monkeypatch.setattr(quant, "check_storage", lambda x, *a, **k: (seen.append(type(x)),
                                                                     real(x, *a, **k)))
    codes = torch.tensor([1, -2, 127], dtype=torch.int8)
    assert quant.decode(codes, "int8").tolist() == [1.0, -2.0, 127.0]
    assert seen == [torch.Tensor]
    seen.clear()
    assert quant.decode(np.array([1], np.int8), "int8").tolist() == [1.0]
    assert seen == [np.ndarray]
    with pytest.raises(TypeError, match=r"^codes: expected dtype uint8"):
        quant.decode(torch.zeros(2, dtype=torch.float8_e4m3fn), "fp8_e4m3")
