"""Workbook 03's puzzle checks fail the classic wrong kernels, with a hint naming the mistake.

Each wrong kernel is the solution notebook's source with one mistake edited in (the edit must
apply, so these tests follow the solutions). The test asserts that the check fails (not "not
attempted") and that the printed hint contains the phrase that points at the mistake. Some
mistakes give the right numbers and are caught only by the access counts (the budget) or by
the shared-memory race check: those are the ones GPU-Puzzles' counters exist for.
"""
import pytest

from tests.test_check_mistakes import assert_caught, mutate, run_check, solution_source

NOTEBOOK = "03_cuda_onramp.ipynb"

MAP = [
    ("every thread writes out[0]", [("out[i] = a[i] + 10.0f;", "out[blockIdx.x] = a[i] + 10.0f;")],
     "several threads wrote the same element"),
    ("writes the next element", [("out[i] = a[i] + 10.0f;", "out[i + 1] = a[i] + 10.0f;")],
     "its index into out is wrong"),
    ("reads the output", [("out[i] = a[i] + 10.0f;", "out[i] = out[i] + 10.0f;")],
     "never read a"),
    ("reads the next element", [("out[i] = a[i] + 10.0f;", "out[i] = a[i + 1] + 10.0f;")],
     "its index into a is wrong"),
]

GUARD = [
    ("no guard", [("if (i < n) out[i]", "out[i]")], "guard with i < n"),
    ("guard one too far", [("if (i < n)", "if (i <= n)")], "one past the end"),
    ("block index forgotten", [("int i = blockIdx.x * blockDim.x + threadIdx.x;",
                                "int i = threadIdx.x;")], "not threadIdx.x alone"),
]

GUARD += [   # attack 0205: the "only elements 0-31" hint fired when the LAST elements were missing
    ("guard stops one short", [("if (i < n)", "if (i < n - 1)")], "element 99",
     ["not threadIdx.x alone"]),
    ("gridDim for blockDim", [("int i = blockIdx.x * blockDim.x + threadIdx.x;",
                               "int i = blockIdx.x * gridDim.x + threadIdx.x;")], "elements 44-99",
     ["not threadIdx.x alone"]),
]

GRID_2D = [
    ("x and y exchanged", [("int col = blockIdx.x * blockDim.x + threadIdx.x;\n"
                            "    int row = blockIdx.y * blockDim.y + threadIdx.y;",
                            "int row = blockIdx.x * blockDim.x + threadIdx.x;\n"
                            "    int col = blockIdx.y * blockDim.y + threadIdx.y;")],
     "x and y are exchanged"),
    ("row stride is rows", [("out[row * cols + col] = x[row * cols + col]",
                             "out[row * rows + col] = x[row * rows + col]")], "r * cols + c"),
    ("column guarded only", [("if (row < rows && col < cols)", "if (col < cols)")],
     "guard the row AND the column"),
    ("bias by row", [("+ bias[col]", "+ bias[row]")], "bias is indexed by the row"),
    ("row ignores the block", [("int row = blockIdx.y * blockDim.y + threadIdx.y;",
                                "int row = threadIdx.y;")], "only rows 0-7 were written"),
]

_LOAD_Q = ("    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)\n"
           "        q_shared[d] = q[d];\n")
SHARED = [
    ("no barrier", [("    __syncthreads();\n", "")], "no __syncthreads() between"),
    ("early return before the barrier",
     [(_LOAD_Q + "    __syncthreads();\n    int t = blockIdx.x * blockDim.x + threadIdx.x;\n"
                 "    if (t < n) {",
       "    int t = blockIdx.x * blockDim.x + threadIdx.x;\n    if (t >= n) return;\n" + _LOAD_Q
       + "    __syncthreads();\n    {")], "must reach every barrier"),
    ("q loaded without a stride", [(_LOAD_Q, "    if (threadIdx.x < head_dim) "
                                             "q_shared[threadIdx.x] = q[threadIdx.x];\n")],
     "some threads must load more than one"),
    ("q read from global memory", [("dot += q_shared[d] * k", "dot += q[d] * k")],
     "load q into shared memory once per block"),
    ("every thread loads all of q", [(_LOAD_Q, "    for (int d = 0; d < head_dim; ++d) "
                                               "q_shared[d] = q[d];\n")],
     "each element should have one writer"),
    # hunt 66: the load guarded like the dot product; the hint said some threads must load
    # more than one, with 32 threads for head_dim 16
    ("only threads with a key load q",
     [(_LOAD_Q, "    if (blockIdx.x * blockDim.x + threadIdx.x < n)\n" + _LOAD_Q)],
     "must still help load q", ["must load more than one"]),
]

WARP_SUM = [
    ("lanes return before the shuffles", [("float v = i < n ? a[i] : 0.0f;",
                                           "if (i >= n) return;\n    float v = a[i];")],
     "every lane in the mask must reach"),
    ("no guard on the read", [("float v = i < n ? a[i] : 0.0f;", "float v = a[i];")],
     "it adds 0"),
    ("offsets start at 8", [("int offset = 16;", "int offset = 8;")], "only lanes 0-15"),
    ("offsets stop at 2", [("offset > 0;", "offset > 1;")], "only the even lanes"),
    ("every lane writes (xor: right by luck)",
     [("if (i % 32 == 0 && warp * 32 < n) out[warp] = v;", "if (warp * 32 < n) out[warp] = v;")],
     "one write per element"),
    ("every lane writes (down: wrong)",
     [("__shfl_xor_sync", "__shfl_down_sync"),
      ("if (i % 32 == 0 && warp * 32 < n) out[warp] = v;", "if (warp * 32 < n) out[warp] = v;")],
     "several threads wrote the same element"),
    ("empty warps write", [("if (i % 32 == 0 && warp * 32 < n)", "if (i % 32 == 0)")],
     "writes nothing"),
    ("atomics into out", [("    for (int offset = 16; offset > 0; offset /= 2)\n"
                           "        v += __shfl_xor_sync(0xffffffffu, v, offset);\n"
                           "    int warp = i / 32;\n"
                           "    if (i % 32 == 0 && warp * 32 < n) out[warp] = v;",
                           "    if (i < n) atomicAdd(&out[i / 32], v);")], "read out"),
    ("summed through shared memory", [(
        "    for (int offset = 16; offset > 0; offset /= 2)\n"
        "        v += __shfl_xor_sync(0xffffffffu, v, offset);\n"
        "    int warp = i / 32;\n"
        "    if (i % 32 == 0 && warp * 32 < n) out[warp] = v;",
        "    __shared__ float s[128];\n    s[threadIdx.x] = v;\n    __syncthreads();\n"
        "    int warp = i / 32;\n    if (i % 32 == 0 && warp * 32 < n) {\n"
        "        float t = 0.0f;\n        for (int j = 0; j < 32; ++j) t += s[threadIdx.x + j];\n"
        "        out[warp] = t;\n    }")], "needs no shared memory"),
]

BLOCK_SUM = [
    ("no barrier", [("    __syncthreads();\n", "")], "no __syncthreads() between"),
    ("early return", [("float v = i < n ? a[i] : 0.0f;", "if (i >= n) return;\n    float v = a[i];")],
     "every lane in the mask must reach"),
    ("all 32 lanes add a warp total", [("v = lane < blockDim.x / 32 ? warp_totals[lane] : 0.0f;",
                                        "v = warp_totals[lane % 8];")], "added 4 times"),
    ("reads totals that do not exist",
     [("__shared__ float warp_totals[8];", "__shared__ float warp_totals[32];"),
      ("v = lane < blockDim.x / 32 ? warp_totals[lane] : 0.0f;", "v = warp_totals[lane];")],
     "no thread wrote"),
    ("each warp writes out", [("if (lane == 0) warp_totals[warp] = v;\n    __syncthreads();\n"
                               "    if (warp == 0) {",
                               "if (lane == 0) out[blockIdx.x] = v;\n    if (false) {")],
     "only warp 7's total"),
    ("every lane stores its warp total", [("if (lane == 0) warp_totals[warp] = v;",
                                           "warp_totals[warp] = v;")],
     "each element should have one writer"),
    # hunt 66: every block's total went to out[0]: the other totals are NaN because nobody
    # wrote them, and the hint named a stale shared-memory read
    ("every block writes out[0]", [("if (lane == 0) out[blockIdx.x] = v;",
                                    "if (lane == 0) out[0] = v;")],
     "several threads wrote the same element", ["no thread wrote"]),
]

MISTAKES = ([("puzzle_map", "SOURCE_MAP", m) for m in MAP]
            + [("puzzle_guard", "SOURCE_GUARD", m) for m in GUARD]
            + [("puzzle_2d", "SOURCE_2D", m) for m in GRID_2D]
            + [("puzzle_shared", "SOURCE_SHARED", m) for m in SHARED]
            + [("puzzle_warp_sum", "SOURCE_WARP_SUM", m) for m in WARP_SUM]
            + [("puzzle_block_sum", "SOURCE_BLOCK_SUM", m) for m in BLOCK_SUM])
SOLUTIONS = [("puzzle_map", "SOURCE_MAP"), ("puzzle_guard", "SOURCE_GUARD"),
             ("puzzle_2d", "SOURCE_2D"), ("puzzle_shared", "SOURCE_SHARED"),
             ("puzzle_warp_sum", "SOURCE_WARP_SUM"), ("puzzle_block_sum", "SOURCE_BLOCK_SUM")]


@pytest.mark.parametrize("task, variable, mistake", MISTAKES,
                         ids=[f"{t}-{m[0]}" for t, _, m in MISTAKES])
def test_puzzle_mistake_is_caught(task, variable, mistake):
    _, edits, phrase, *not_phrases = mistake
    assert_caught(task, mutate(solution_source(NOTEBOOK, variable), edits), phrase,
                  not_phrases=not_phrases[0] if not_phrases else (), device="cpu")


@pytest.mark.parametrize("task, variable", SOLUTIONS)
def test_puzzle_check_passes_the_solution_and_reports_the_stub(task, variable):
    result, printed = run_check(task, solution_source(NOTEBOOK, variable), device="cpu")
    assert result.passed, printed
    assert "Most accesses by one thread" in printed and "Sectors (32 bytes)" in printed
    result, printed = run_check(task, solution_source(NOTEBOOK, variable, "exercises"),
                                device="cpu")
    assert result.status == "not attempted" and "Traceback" not in printed


def test_a_correct_kernel_written_differently_passes():
    """A warp sum with __shfl_down_sync, lane 0 writing: right, and within the budget."""
    source = mutate(solution_source(NOTEBOOK, "SOURCE_WARP_SUM"),
                    [("__shfl_xor_sync", "__shfl_down_sync")])
    result, printed = run_check("puzzle_warp_sum", source, device="cpu")
    assert result.passed, printed


def test_every_puzzle_has_three_mistakes():
    from pagedattn_lab.lessons import lesson
    counts = {task: sum(1 for t, _, _ in MISTAKES if t == task) for task in lesson("03").tasks}
    assert all(n >= 3 for n in counts.values()), counts
