"""Workbook 09's checks fail the classic wrong answers, with a hint that names the mistake.

group_rows: wrong answers written here the way a learner gets them wrong (mask_tile's are in
test_check_mistakes_tc_mask.py).
tc_tile_scores: the solution notebook's kernel with one mistake edited in (the edit must apply,
so these tests follow the solutions), and right kernels written another way, which must pass.
Each case asserts that the check fails (not "not attempted"), that the printed hint contains
the phrase that points at the mistake and, where another hint would be tempting, that it is
not given.
"""
import types

import numpy as np
import pytest

from tests.test_check_mistakes import assert_caught, mutate, run_check, solution_source
from tests.check_helpers import assert_kernel_checks_on_the_gpu
from tests.test_check_mistakes_tc_mask import MASK_MISTAKES

NOTEBOOK = "09_tensor_core_decode.ipynb"


def _tiles(rows, group, d, dtype=None, pad=0.0):
    n = -(-group // 16)
    dtype = rows.dtype if dtype is None else dtype
    out = np.full((n * 16, d), pad, dtype)
    out[:group] = rows
    return out.reshape(n, 16, d)


def modulo_group(q, j, g):
    return _tiles(q[j::q.shape[0] // g][:g], g, q.shape[1])


def no_offset(q, j, g):
    return _tiles(q[:g], g, q.shape[1])


def padded_by_repeating(q, j, g):
    n = -(-g // 16)
    return np.resize(q[j * g:(j + 1) * g], (n * 16, q.shape[1])).reshape(n, 16, -1)


def padded_with_nan(q, j, g):
    return _tiles(q[j * g:(j + 1) * g], g, q.shape[1], pad=np.nan)


def one_tile_only(q, j, g):
    return _tiles(q[j * g:(j + 1) * g][:16], min(g, 16), q.shape[1])


def not_padded(q, j, g):
    return q[j * g:(j + 1) * g][None]


def float64_tiles(q, j, g):
    return _tiles(q[j * g:(j + 1) * g], g, q.shape[1], dtype=np.float64)


def striped(q, j, g):
    n = -(-g // 16)
    out = np.zeros((n * 16, q.shape[1]), q.dtype)
    for i in range(g):
        out[(i % n) * 16 + i // n] = q[j * g + i]
    return out.reshape(n, 16, -1)


def transposed(q, j, g):
    return np.swapaxes(_tiles(q[j * g:(j + 1) * g], g, q.shape[1]), 1, 2)


def fp16_hard_coded(q, j, g):          # the prompt's example dtype, not q's
    return _tiles(q[j * g:(j + 1) * g], g, q.shape[1], dtype=np.float16)


def tiles_floor_plus_one(q, j, g):     # group // 16 + 1: one tile too many at 16, 48, 64
    n = g // 16 + 1
    out = np.zeros((n * 16, q.shape[1]), q.dtype)
    out[:g] = q[j * g:(j + 1) * g]
    return out.reshape(n, 16, -1)


def tiles_floor(q, j, g):              # group // 16 (at least 1): group 17 loses its last head
    n = max(g // 16, 1)
    out = np.zeros((n * 16, q.shape[1]), q.dtype)
    out[:min(g, n * 16)] = q[j * g:(j + 1) * g][:n * 16]
    return out.reshape(n, 16, -1)


def padding_zeroed_in_q(q, j, g):    # right tiles, but the padding rows were zeroed in q
    n = -(-g // 16)
    rows = q[j * g:j * g + 16 * n]      # a view of q: past the group, the next group's heads
    rows[g:] = 0
    return _tiles(rows[:g], g, q.shape[1])


GROUP_MISTAKES = [
    ("modulo group", modulo_group, "consecutive query heads", ()),
    ("group starts at head 0", no_offset, "not at head 0", ()),
    ("padding repeats the group", padded_by_repeating, "rows past the group must be zero",
     ("consecutive",)),
    ("padding is NaN", padded_with_nan, "rows past the group must be zero", ("consecutive",)),
    ("one tile for any group", one_tile_only, "needs ceil(", ("not [tiles, head_dim",)),
    ("rows not padded to 16", not_padded, "pad the", ()),
    ("float64 tiles", float64_tiles, "keep q's dtype", ()),
    ("tiles striped", striped, "in order", ()),
    ("tile transposed", transposed, "not [tiles, head_dim, 16]", ()),
    ("fp16 hard-coded", fp16_hard_coded, "keep q's dtype", ()),
    ("group // 16 + 1 tiles", tiles_floor_plus_one, "one too many", ("not [tiles, head_dim",)),
    ("group // 16 tiles", tiles_floor, "needs ceil(", ("not [tiles, head_dim",)),
    ("padding zeroed in q", padding_zeroed_in_q, "changed its input q", ()),
]

_STORE = ("    float* out = scores + ((long long)kv_head * gridDim.x + tile) * 256;\n"
          "    wmma::store_matrix_sync(out, s, 16, wmma::mem_row_major);")


def _staged_store(keep, otherwise=None):
    """The tile stored through shared memory; element (r, c) written where `keep` holds (or
    `otherwise` written there)."""
    write = (f"if ({keep}) out[i] = s_out[i];" if otherwise is None
             else f"out[i] = ({keep}) ? s_out[i] : {otherwise};")
    return ("    __shared__ float s_out[256];\n"
            "    wmma::store_matrix_sync(s_out, s, 16, wmma::mem_row_major);\n"
            "    __syncwarp();\n"
            "    float* out = scores + ((long long)kv_head * gridDim.x + tile) * 256;\n"
            "    for (int i = lane; i < 256; i += 32) {\n"
            f"        int r = i / 16, c = i % 16;\n        {write}\n    }}")


_SYNC = ("    __syncwarp();                // the tiles are complete before any lane loads a "
         "fragment\n")

TILE_MISTAKES = [
    # the executor and, by luck, the GPU compute the right scores without the barrier
    ("no __syncwarp", [(_SYNC, "")], "no __syncwarp()"),
    ("__syncwarp before the copies", [(_SYNC, ""), ("    __half zero = ",
                                                    "    __syncwarp();\n    __half zero = ")],
     "no __syncwarp()"),
    ("K read row-major as B", [("__half, wmma::col_major> b", "__half, wmma::row_major> b")],
     "col_major"),
    ("scores stored column-major", [("wmma::mem_row_major", "wmma::mem_col_major")],
     "stored transposed"),
    ("GQA as modulo", [("(kv_head * group + r)", "(kv_head + r * num_kv_heads)")],
     "consecutive heads"),
    ("Q rows not offset by kv head", [("(kv_head * group + r)", "(r)")],
     "every block used the first group"),
    ("K of kv head 0", [("(slot * num_kv_heads + kv_head)", "(slot * num_kv_heads)")],
     "from kv head 0"),
    ("padding rows not zeroed", [("r < group ? q[", "r < 16 ? q[")], "zero the Q rows past"),
    ("tokens past seq_len read", [("if (t < seq_len) {", "{")], "at or past seq_len"),
    ("ldm 16", [("q_tile + k0, head_dim", "q_tile + k0, 16"),
                ("k_tile + k0, head_dim", "k_tile + k0, 16")], "ldm = head_dim"),
    ("ldm 16 for K only", [("k_tile + k0, head_dim", "k_tile + k0, 16")], "K's load"),
    # rows MAX_D apart read shared memory the copies never wrote: NaN, not arithmetic
    ("ldm MAX_D", [("q_tile + k0, head_dim", "q_tile + k0, MAX_D"),
                   ("k_tile + k0, head_dim", "k_tile + k0, MAX_D")], "ldm = head_dim"),
    ("token tile not offset", [("int t = 16 * tile + r;", "int t = r;")],
     "every tile read tokens 0..15"),
    ("lanes leave before the WMMA calls",
     [("    __syncwarp();", "    if (lane >= 16) return;\n    __syncwarp();")],
     "every lane of the warp must call"),
    ("scores offset by seq_len / 16 + 1 tiles",
     [("(long long)kv_head * gridDim.x + tile", "(long long)kv_head * (seq_len / 16 + 1) + tile")],
     "out-of-bounds write of scores"),
    ("token seq_len read", [("if (t < seq_len) {", "if (t <= seq_len) {")], "at or past seq_len",
     ("zero the Q rows",)),
    ("K rows past seq_len left as they were", [("        k_tile[i] = k;",
                                                "        if (t < seq_len) k_tile[i] = k;")],
     "at or past seq_len", ("zero the Q rows",)),
    # the store's ldm: rows past a tile's 16 floats write into the next tile or past scores
    ("store ldm head_dim", [("out, s, 16, wmma", "out, s, head_dim, wmma")],
     "its ldm is 64 (= head_dim here)", ("buffer's index",)),
    ("store ldm MAX_D", [("out, s, 16, wmma", "out, s, MAX_D, wmma")],
     "its ldm is 128 (= MAX_D here)", ("buffer's index",)),
    ("store ldm 16 * gridDim.x", [("out, s, 16, wmma", "out, s, 16 * gridDim.x, wmma")],
     "store with ldm 16", ("buffer's index",)),
    ("ldm 32", [("q_tile + k0, head_dim", "q_tile + k0, 32"),
                ("k_tile + k0, head_dim", "k_tile + k0, 32")], "ldm = head_dim, not 32"),
    ("B loaded from q_tile", [("load_matrix_sync(b, k_tile + k0",
                               "load_matrix_sync(b, q_tile + k0")],
     "Q times Q^T"),
    ("scores stored for the group's rows only", [(_STORE, _staged_store("r < group"))],
     "never written", ("zero the Q rows",)),
    ("scores stored for tokens < seq_len only",
     [(_STORE, _staged_store("16 * tile + c < seq_len"))], "never written",
     ("zero the Q rows", "load zeros into their K rows")),
]


@pytest.mark.parametrize("name, impl, phrase, not_phrases", GROUP_MISTAKES,
                         ids=[m[0] for m in GROUP_MISTAKES])
def test_group_rows_mistake_is_caught(name, impl, phrase, not_phrases):
    assert_caught("group_rows", impl, phrase, not_phrases=not_phrases)


@pytest.mark.parametrize("name, edits, phrase, not_phrases", [(*m, ())[:4] for m in TILE_MISTAKES],
                         ids=[m[0] for m in TILE_MISTAKES])
def test_tile_mistake_is_caught(name, edits, phrase, not_phrases):
    assert_caught("tc_tile_scores", mutate(solution_source(NOTEBOOK, "SOURCE_TILE"), edits),
                  phrase, not_phrases=not_phrases, device="cpu")


def test_tile_check_passes_the_solution_and_reports_the_stub():
    result, printed = run_check("tc_tile_scores", solution_source(NOTEBOOK, "SOURCE_TILE"),
                                device="cpu")
    assert result.passed, printed
    result, printed = run_check("tc_tile_scores",
                                solution_source(NOTEBOOK, "SOURCE_TILE", "exercises"),
                                device="cpu")
    assert result.status == "not attempted" and "Traceback" not in printed


# Caught on the GPU by its own evidence (the guard band after scores, or wrong values where the
# CPU executor reports lanes missing from a warp-collective WMMA call, or reads the NaN it
# fills shared memory with), not by the CPU's phrase.
GPU_OTHER_EVIDENCE = {"lanes leave before the WMMA calls",
                      "scores offset by seq_len / 16 + 1 tiles", "ldm MAX_D"}


@pytest.mark.gpu
def test_tile_check_on_the_gpu():
    assert_kernel_checks_on_the_gpu("tc_tile_scores", NOTEBOOK, "SOURCE_TILE",
                                    [m[:3] for m in TILE_MISTAKES], rights=RIGHT_TILES,
                                    other_evidence=GPU_OTHER_EVIDENCE)


def test_group_rows_check_passes_a_correct_layout_written_differently():
    def by_loop(q, kv_head, group):
        tiles = np.zeros((-(-group // 16), 16, q.shape[1]), q.dtype)
        for i in range(group):
            tiles[i // 16, i % 16] = q[kv_head * group + i]
        return tiles
    result, printed = run_check("group_rows", by_loop)
    assert result.passed, printed


def test_every_task_has_its_mistakes():
    """Six or more wrong answers for each NumPy task, three or more for the kernel."""
    from pagedattn_lab.lessons import lesson
    assert lesson("09").tasks == ["group_rows", "tc_tile_scores", "mask_tile"]
    assert len(GROUP_MISTAKES) >= 6 and len(MASK_MISTAKES) >= 6 and len(TILE_MISTAKES) >= 3


_LOADS = ("        wmma::load_matrix_sync(a, q_tile + k0, head_dim);\n"
          "        wmma::load_matrix_sync(b, k_tile + k0, head_dim);\n")
_LOAD_MACRO = [("#define MAX_D 128", "#define MAX_D 128\n#define LOAD(f, p, ld) "
                "wmma::load_matrix_sync(f, p, ld)"),
               (_LOADS, "        LOAD(a, q_tile + k0, head_dim);\n"
                        "        LOAD(b, k_tile + k0, head_dim);\n")]
_MMA_HELPER = [   # the loads in a __device__ function defined before the kernel
    ("#define MAX_D 128", "#define MAX_D 128\n"
     "__device__ void tile_mma(wmma::fragment<wmma::accumulator, 16, 16, 16, float>& s,\n"
     "                         const __half* qt, const __half* kt, int ld) {\n"
     "    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;\n"
     "    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b;\n"
     "    wmma::load_matrix_sync(a, qt, ld);\n    wmma::load_matrix_sync(b, kt, ld);\n"
     "    wmma::mma_sync(s, a, b, s);\n}\n"),
    (_LOADS + "        wmma::mma_sync(s, a, b, s);\n",
     "        tile_mma(s, q_tile + k0, k_tile + k0, head_dim);\n")]
_SYNC_MACRO = [("#define MAX_D 128", "#define MAX_D 128\n#define WARP_SYNC() __syncwarp()")]
_CG = ("#define MAX_D 128", "#define MAX_D 128\n#include <cooperative_groups.h>\n"
       "namespace cg = cooperative_groups;")

TILE_MISTAKES += [   # the barrier missing where the loads or the barrier sit in a macro/helper
    ("no __syncwarp, loads through a macro", [(_SYNC, ""), *_LOAD_MACRO],
     "no __syncwarp()"),
    ("no __syncwarp, loads in a helper function", [(_SYNC, ""), *_MMA_HELPER],
     "no __syncwarp()"),
    ("barrier macro before the copies",
     [(_SYNC, ""), *_SYNC_MACRO, ("    __half zero = ", "    WARP_SYNC();\n    __half zero = ")],
     "no __syncwarp()"),
    ("a shuffle in place of __syncwarp",   # waits for the warp, orders no shared memory
     [(_SYNC, "    (void)__shfl_sync(0xffffffffu, 0, 0);\n")], "no __syncwarp()"),
    # the source check alone would pass it: the race check sees the loads unordered (on a GPU,
    # through case 1 run again on the CPU executor)
    ("a __syncwarp() that never runs", [(_SYNC, "    if (seq_len < 0) __syncwarp();\n")],
     "no __syncwarp() or __syncthreads() between"),
]


RIGHT_TILES = [   # (name, edits of the solution): right kernels written another way
    ("K^T in shared memory, B row-major", [
        ("        k_tile[i] = k;", "        k_tile[d * 16 + r] = k;"),
        ("__half, wmma::col_major> b", "__half, wmma::row_major> b"),
        ("load_matrix_sync(b, k_tile + k0, head_dim)",
         "load_matrix_sync(b, k_tile + k0 * 16, 16)")]),
    ("rows padded to head_dim + 8 against bank conflicts", [
        ("q_tile[16 * MAX_D]", "q_tile[16 * (MAX_D + 8)]"),
        ("k_tile[16 * MAX_D]", "k_tile[16 * (MAX_D + 8)]"),
        ("q_tile[i] =", "q_tile[r * (head_dim + 8) + d] ="),
        ("k_tile[i] = k;", "k_tile[r * (head_dim + 8) + d] = k;"),
        ("q_tile + k0, head_dim)", "q_tile + k0, head_dim + 8)"),
        ("k_tile + k0, head_dim)", "k_tile + k0, head_dim + 8)")]),
    ("Q padding left unwritten, its scores stored as 0", [
        ("q_tile[i] = r < group ? q[(long long)(kv_head * group + r) * head_dim + d] : zero;",
         "if (r < group) q_tile[i] = q[(long long)(kv_head * group + r) * head_dim + d];"),
        (_STORE, _staged_store("r < group", "0.0f"))]),
    # the barrier written another way, or where the first load_matrix_sync is not in the kernel
    ("loads through a macro defined before the kernel", _LOAD_MACRO),
    ("loads in a __device__ helper defined before the kernel", _MMA_HELPER),
    ("__syncthreads_count as the barrier", [("__syncwarp();   ", "(void)__syncthreads_count(1);")]),
    ("the barrier through a macro", [*_SYNC_MACRO, ("__syncwarp();   ", "WARP_SYNC();")]),
    ("__syncwarp(0xffffffff) in the copy loop", [
        (_SYNC, ""),
        ("        k_tile[i] = k;\n", "        k_tile[i] = k;\n        __syncwarp(0xffffffff);\n")]),
    ("a score buffer zeroed after the barrier", [
        (_SYNC, _SYNC + "    __shared__ float s_zero[256];\n"
                "    for (int i = lane; i < 256; i += 32) s_zero[i] = 0.0f;\n")]),
    ("copies through pointer aliases, compound assignment", [
        ("    for (int i = lane;", "    __half* qs = q_tile;\n    __half* ks = k_tile;\n"
                                 "    for (int i = lane;"),
        ("q_tile[i] =", "qs[i] ="), ("k_tile[i] = k;", "ks[i] = zero; ks[i] += k;")]),
    ("load_matrix_sync named in a comment and a string before the copies", [
        ("    int group =", "    // wmma::load_matrix_sync(a, q_tile, head_dim) reads the tiles\n"
                          "    const char* note = \"load_matrix_sync(\"; (void)note;\n"
                          "    int group =")]),
    ("rows MAX_D apart, loaded with ldm MAX_D", [
        ("q_tile[i] =", "q_tile[r * MAX_D + d] ="),
        ("k_tile[i] = k;", "k_tile[r * MAX_D + d] = k;"),
        ("q_tile + k0, head_dim", "q_tile + k0, MAX_D"),
        ("k_tile + k0, head_dim", "k_tile + k0, MAX_D")]),
    ("stored through shared rows of 20 floats (ldm 20), copied out", [(_STORE, (
        "    __shared__ float s_out[16 * 20];\n"
        "    wmma::store_matrix_sync(s_out, s, 20, wmma::mem_row_major);\n"
        "    __syncwarp();\n"
        "    float* out = scores + ((long long)kv_head * gridDim.x + tile) * 256;\n"
        "    for (int i = lane; i < 256; i += 32) out[i] = s_out[(i / 16) * 20 + i % 16];"))]),
    ("k0 steps downward", [("for (int k0 = 0; k0 < head_dim; k0 += 16)",
                            "for (int k0 = head_dim - 16; k0 >= 0; k0 -= 16)")]),
    ("an extra __syncwarp before the accumulator", [
        ("    wmma::fill_fragment(s, 0.0f);", "    __syncwarp();\n    wmma::fill_fragment(s, 0.0f);")]),
]


@pytest.mark.parametrize("name, edits", RIGHT_TILES, ids=[m[0] for m in RIGHT_TILES])
def test_tile_check_passes_a_right_kernel_written_differently(name, edits):
    result, printed = run_check("tc_tile_scores",
                                mutate(solution_source(NOTEBOOK, "SOURCE_TILE"), edits),
                                device="cpu")
    assert result.passed, printed


def test_group_rows_check_passes_padding_written_with_np_pad():
    def padded(q, kv_head, group):
        n = -(-group // 16)
        rows = q[kv_head * group:(kv_head + 1) * group]
        return np.pad(rows, ((0, n * 16 - group), (0, 0))).reshape(n, 16, -1)
    result, printed = run_check("group_rows", padded)
    assert result.passed, printed


SOURCE_ONLY_RIGHT_TILES = [   # barriers the CPU executor cannot run: the source check alone
    ("cg::sync of a warp tile", [
        _CG, ("__syncwarp();   ", "cg::sync(cg::tiled_partition<32>(cg::this_thread_block()));")]),
    ("a warp tile's .sync()", [_CG, ("__syncwarp();   ",
                                     "cg::tiled_partition<32>(cg::this_thread_block()).sync();")]),
    ("cooperative_groups::sync of the block", [
        _CG, ("__syncwarp();   ", "cooperative_groups::sync(cg::this_thread_block());")]),
    ("inline-asm bar.sync", [("__syncwarp();   ", 'asm volatile("bar.sync 0;" ::: "memory");')]),
    ("__launch_bounds__ on the kernel", [("__global__ void tc_tile_scores",
                                          "__global__ void __launch_bounds__(32) tc_tile_scores")]),
]


@pytest.mark.parametrize("name, edits", SOURCE_ONLY_RIGHT_TILES,
                         ids=[m[0] for m in SOURCE_ONLY_RIGHT_TILES])
def test_tile_barrier_check_takes_a_barrier_written_differently(name, edits):
    from pagedattn_lab.grading.source_barriers import missing_barrier_in_source
    missing_barrier_in_source(mutate(solution_source(NOTEBOOK, "SOURCE_TILE"), edits))   # no Mismatch


def test_tile_barrier_check_reads_an_asm_barrier_in_a_comment_as_none():
    from pagedattn_lab.grading.source_barriers import missing_barrier_in_source
    from pagedattn_lab.grading.report import Mismatch
    with pytest.raises(Mismatch, match="no __syncwarp"):
        missing_barrier_in_source(mutate(solution_source(NOTEBOOK, "SOURCE_TILE"),
                             [(_SYNC, '    // asm("bar.sync 0;") would do\n')]))


def test_tile_check_passes_copies_and_barrier_in_a_helper_defined_after_the_kernel():
    source = solution_source(NOTEBOOK, "SOURCE_TILE")
    start = source.index("    int group = num_heads / num_kv_heads;\n")
    end = source.index(_SYNC) + len(_SYNC)
    params = ("__half* q_tile, __half* k_tile, const __half* q, const __half* k_cache, "
              "const int* block_table, int num_heads, int num_kv_heads, int head_dim, "
              "int page_size, int seq_len, int tile, int kv_head, int lane")
    args = ("q_tile, k_tile, q, k_cache, block_table, num_heads, num_kv_heads, head_dim, "
            "page_size, seq_len, tile, kv_head, lane")
    source = (source[:start].replace("extern \"C\"", f"__device__ void copy_tiles({params});\n\n"
                                     "extern \"C\"", 1)
              + f"    copy_tiles({args});\n" + source[end:]
              + f"\n__device__ void copy_tiles({params})\n{{\n" + source[start:end] + "}\n")
    result, printed = run_check("tc_tile_scores", source, device="cpu")
    assert result.passed, printed


def _as_on_a_gpu(source):
    """The grader's kernel as a GPU check holds it: no race check on its own launches, the
    CPU executor built only when asked (here, by the barrier case)."""
    from pagedattn_lab.grading.kernel_runner import Kernel
    from pagedattn_lab.rawkernel import RawKernel
    kernel = Kernel.__new__(Kernel)
    kernel.name, kernel.remote, kernel.device, kernel.racecheck = \
        "tc_tile_scores", None, "gpu", False
    kernel.kernel = RawKernel(source, "tc_tile_scores")
    return types.SimpleNamespace(get=lambda: kernel)


def test_on_a_gpu_the_barrier_case_runs_case_1_race_checked_on_the_cpu():
    """What the source check passes and no GPU run shows (a __syncwarp() that never runs) is
    caught by case 1 on the CPU executor; a right kernel passes; a barrier the executor cannot
    compile (cooperative groups) leaves the decision to the source check, which takes it."""
    from pagedattn_lab.grading.checks_tc_decode import _barrier_case
    from pagedattn_lab.grading.report import Mismatch
    solution = solution_source(NOTEBOOK, "SOURCE_TILE")
    never = mutate(solution, [(_SYNC, "    if (seq_len < 0) __syncwarp();\n")])
    with pytest.raises(Mismatch, match=r"run on the CPU executor .* no __syncwarp\(\) or "
                                       r"__syncthreads\(\) between"):
        _barrier_case(_as_on_a_gpu(never), never)
    _barrier_case(_as_on_a_gpu(solution), solution)
    cg = mutate(solution, SOURCE_ONLY_RIGHT_TILES[0][1])
    _barrier_case(_as_on_a_gpu(cg), cg)
    with pytest.raises(Mismatch, match="no __syncwarp"):   # and without the barrier, fails it
        no_sync = mutate(cg, [("cg::sync(cg::tiled_partition<32>(cg::this_thread_block()));",
                               "")])
        _barrier_case(_as_on_a_gpu(no_sync), no_sync)


def test_tile_check_says_a_nan_can_be_read():
    """Rows ldm = MAX_D apart read shared memory the copies never wrote (NaN on the CPU
    executor): the message must not send the learner after a 0/0 alone."""
    edits = [("q_tile + k0, head_dim", "q_tile + k0, MAX_D"),
             ("k_tile + k0, head_dim", "k_tile + k0, MAX_D")]
    result, printed = run_check("tc_tile_scores", mutate(solution_source(NOTEBOOK, "SOURCE_TILE"),
                                                         edits), device="cpu")
    assert result.status == "failed", printed
    assert "or read" in " ".join(printed.split()), printed
