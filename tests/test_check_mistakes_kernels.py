"""Every CUDA C check fails the classic wrong kernels, with a hint that names the mistake.

Each wrong kernel is the solution notebook's source with one mistake edited in (the edit must
apply, so these tests follow the solutions).
"""
import numpy as np
import pytest

from pagedattn_lab.grading import kernel_runner as kr
from tests.check_helpers import (assert_caught, assert_kernel_checks_on_the_gpu, mutate,
                                 run_check, solution_source)

# -- CUDA C tasks ------------------------------------------------------------------------------

GATHER_MISTAKES = [
    ("head stride", [("(slot * num_kv_heads + kv_head) * head_dim + d",
                      "slot * head_dim + kv_head * head_dim + d")], "missing num_kv_heads"),
    ("shared table", [("block_tables[b * max_pages + t / page_size]",
                       "block_tables[t / page_size]")], "reads row 0 of block_tables"),
    ("offset + 1", [("t % page_size;", "t % page_size + 1;")], "off by one"),
    ("no stride loop", [("i < row_len; i += blockDim.x) {\n        int kv_head",
                         "i < row_len && i < (int)blockDim.x; i += blockDim.x) {\n"
                         "        int kv_head")],
     "with a stride"),
    ("no zeros", [("k_out[out_row + i] = 0.0f;\n            v_out[out_row + i] = 0.0f;", "")],
     "past seq_lens[b] were never written"),
    ("no length guard", [("if (t >= seq_lens[b]) {", "if (false) {")], "past the sequence's end"),
]
# Right values from threads that do not share the row (the write counts show it; a thread's
# whole-row loop stores the same values as its neighbours', so the values cannot).
GATHER_MISTAKES += [
    ("every thread copies the whole row",
     [("int i = threadIdx.x; i < row_len; i += blockDim.x", "int i = 0; i < row_len; i++")],
     "every one of the 32 threads copies the whole row"),
    ("every thread copies the token rows only",
     [("int i = threadIdx.x; i < row_len; i += blockDim.x) {\n        int kv_head",
       "int i = 0; i < row_len; i++) {\n        int kv_head")],
     "every one of the 32 threads copies the whole row"),
    ("thread 0 copies the row alone",
     [("    int row_len = num_kv_heads * head_dim;",
       "    if (threadIdx.x != 0) return;\n    int row_len = num_kv_heads * head_dim;"),
      ("int i = threadIdx.x; i < row_len; i += blockDim.x", "int i = 0; i < row_len; i++")],
     "only thread 0 stores anything of its 32", ["every one of the 32 threads"]),
]

NAIVE_MISTAKES = [
    ("no scale", [("        score *= scale;\n", "")], "not scaled"),
    ("no causal mask", [("for (int j = 0; j <= t; ++j)", "for (int j = 0; j < seq_lens[b]; ++j)")],
     "no causal mask"),
    ("mask one short", [("for (int j = 0; j <= t; ++j)", "for (int j = 0; j < t; ++j)")],
     "stops one key early"),
    ("shared table", [("block_tables + (long long)b * max_pages", "block_tables")],
     "one page table for the whole batch"),
    ("head stride", [("(slot * num_kv_heads + kv_head) * head_dim",
                      "slot * head_dim + kv_head * head_dim")], "missing num_kv_heads"),
    ("GQA as modulo", [("h / (num_heads / num_kv_heads);", "h % num_kv_heads;")],
     "not h % num_kv_heads"),
    ("INFINITY", [("NEG_INF, running_sum", "-INFINITY, running_sum")], "NVRTC"),
    ("padding not zeroed", [("for (int d = 0; d < head_dim; ++d) out[row + d] = 0.0f;\n", "")],
     "past seq_lens[b] were never written"),
    ("token index", [("int t = blockIdx.x * blockDim.x + threadIdx.x;", "int t = threadIdx.x;")],
     "blockIdx.x * blockDim.x + threadIdx.x"),
    ("no rescale", [("acc[d] = acc[d] * rescale + weight", "acc[d] = acc[d] + weight")],
     "rescale the accumulator"),
    ("max starts at 0", [("NEG_INF, running_sum", "0.0f, running_sum")],
     "the running max starts at 0"),
    # right while the scores are small; the case of scores near +100 overflows expf(score)
    ("no max subtracted", [("expf(running_max - new_max)", "1.0f"),
                           ("expf(score - new_max)", "expf(score)")],
     "no max is subtracted", ["running max starts at 0"]),
    ("kv head = h (faults)",
     [("int kv_head = h / (num_heads / num_kv_heads);", "int kv_head = h;")],
     "thread ("),
]

TILED_MISTAKES = [
    ("early return",
     [("    bool active = t < seq_len;", "    if (t >= seq_len) return;\n    bool active = true;")],
     "must reach every __syncthreads"),
    ("no barrier after compute", [(
        "        __syncthreads();                         "
        "// everyone is done before the next load\n",
        "")], "between the compute and the next page's load"),
    ("no barrier after load", [(
        "        __syncthreads();                         // the tile is loaded\n", "")],
     "between its load and its compute"),
    ("query in one shared buffer", [("float my_q[MAX_HEAD_DIM], acc[MAX_HEAD_DIM];",
                                     "__shared__ float my_q[MAX_HEAD_DIM]; "
                                     "float acc[MAX_HEAD_DIM];")],
     "belongs in a register"),
    ("no causal mask", [("int last = min(n_keys, t - first_key + 1);", "int last = n_keys;")],
     "no causal mask"),
    ("head stride", [("(slot * num_kv_heads + kv_head) * head_dim + i % head_dim",
                      "slot * head_dim + kv_head * head_dim + i % head_dim")],
     "missing num_kv_heads"),
    ("no scale", [("q[row + d] * scale", "q[row + d]")], "not scaled"),
]

# Issue 9: races the CPU executor shows only with its race check, and more wrong kernels.
GATHER_MISTAKES += [
    ("copies one head per row", [("for (int i = threadIdx.x; i < row_len; i += blockDim.x) {\n"
                                  "        int kv_head",
                                  "for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {\n"
                                  "        int kv_head")],
     "every kv head of the token"),
    ("values from k_cache", [("v_out[out_row + i] = v_cache[src];",
                              "v_out[out_row + i] = k_cache[src];")], "v_out holds the keys"),
    ("v padding not zeroed", [("            v_out[out_row + i] = 0.0f;\n", "")],
     "past seq_lens[b] were never written", ["0/0"]),
]
NAIVE_MISTAKES += [
    ("accumulator in shared memory", [("    float acc[MAX_HEAD_DIM];",
                                       "    __shared__ float acc[MAX_HEAD_DIM];")],
     "every thread writes `acc`"),
    ("weight against the old max", [("float weight = expf(score - new_max);",
                                     "float weight = expf(score - running_max);")],
     "against the new max", ["nothing was written", "never written"]),
    ("head_dim fixed at 8", [("for (int d = 0; d < head_dim; ++d) out[row + d] = acc[d] / "
                              "running_sum;",
                              "for (int d = 0; d < 8; ++d) out[row + d] = acc[d] / running_sum;")],
     "only dims 0..7"),
]
TILED_MISTAKES += [
    ("score in shared memory", [("                float score = 0.0f;\n",
                                 "                __shared__ float score;\n"
                                 "                score = 0.0f;\n")],
     "every thread writes `score`"),
    ("tile load without a stride", [("for (int i = threadIdx.x; i < n_keys * head_dim; "
                                     "i += blockDim.x) {",
                                     "for (int i = threadIdx.x; i < n_keys * head_dim && "
                                     "i < (int)blockDim.x; i += blockDim.x) {")],
     "is every element of the tile", ["new max", "running max starts at 0"]),
    ("no max subtracted", [("expf(running_max - new_max)", "1.0f"),
                           ("expf(score - new_max)", "expf(score)")],
     "no max is subtracted", ["running max starts at 0", "is every element of the tile"]),
    ("causal one short", [("int last = min(n_keys, t - first_key + 1);",
                           "int last = min(n_keys, t - first_key);")], "stops one key early"),
    ("kv head h in the load", [("(slot * num_kv_heads + kv_head) * head_dim + i % head_dim",
                                "(slot * num_kv_heads + h) * head_dim + i % head_dim")],
     "not kv head h"),
]

# Attack 0205: right only for pages no longer than the block, for head_dim <= 32, for finite
# numbers in the cache slots past seq_len; hints that blamed a race the race check ruled out.
_TILE_LOAD = ("        for (int i = threadIdx.x; i < n_keys * head_dim; i += blockDim.x) {\n"
              "            long long slot = (long long)page * page_size + i / head_dim;\n")
_ROW_LOAD = ("        for (int i = threadIdx.x * head_dim; i < n_keys * head_dim && "
             "(int)threadIdx.x < n_keys; ++i) {\n"
             "            if (i >= (int)(threadIdx.x + 1) * head_dim) break;\n"
             "            long long slot = (long long)page * page_size + i / head_dim;\n")
TILED_MISTAKES += [
    ("one key row per thread (page_size <= 16 only)", [(_TILE_LOAD, _ROW_LOAD)],
     "is every element of the tile"),
    ("whole page, masked weights (0 * NaN)",
     [("int n_keys = min(page_size, keys_needed - first_key);", "int n_keys = page_size;"),
      ("            int last = min(n_keys, t - first_key + 1);   // causal: keys up to t\n"
       "            for (int j = 0; j < last; ++j) {\n"
       "                float score = 0.0f;\n"
       "                for (int d = 0; d < head_dim; ++d) score += my_q[d] * k_tile[j * head_dim "
       "+ d];\n",
       "            for (int j = 0; j < n_keys; ++j) {\n"
       "                float score = 0.0f;\n"
       "                for (int d = 0; d < head_dim; ++d) score += my_q[d] * k_tile[j * head_dim "
       "+ d];\n"
       "                if (first_key + j > t) score = NEG_INF;\n")],
     "0 * NaN is NaN"),
    ("arrays of 32", [("float my_q[MAX_HEAD_DIM], acc[MAX_HEAD_DIM];",
                       "float my_q[32], acc[32];")], "need MAX_HEAD_DIM (128) entries"),
    ("scaled twice", [("score += my_q[d] * k_tile[j * head_dim + d];\n",
                       "score += my_q[d] * k_tile[j * head_dim + d];\n"
                       "                score *= scale;\n")], "scaled twice", ["race"]),
    ("V weighed from k_tile", [("weight * v_tile[j * head_dim + d]",
                                "weight * k_tile[j * head_dim + d]")], "not k_tile"),
    ("softmax restarted on every page", [("        int page = table[p];",
                                          "        int page = table[p]; running_max = NEG_INF;")],
     "never reset per page", ["look for a race"]),
]
# Attack h1: right values from more loads than the prompt's staging (the values cannot show
# them; the access counts do).
TILED_MISTAKES += [
    ("every block loads its whole sequence",
     [("first_query < seq_len ? min(seq_len, first_query + (int)blockDim.x) : 0", "seq_len")],
     "loads its whole sequence"),
    ("last page loaded whole",
     [("int n_keys = min(page_size, keys_needed - first_key);", "int n_keys = page_size;")],
     "the last page's slots from keys_needed on"),
    # sequence 0 right, the others NaN (page -1 read from the wrong row): the hint blamed the
    # tile loads or the softmax.
    ("table rows max_len / page_size apart",
     [("block_tables + (long long)b * max_pages;",
       "block_tables + (long long)b * ((max_len + page_size - 1) / page_size);")],
     "look at what depends on b", ["your kernel computed nan"]),
]
NAIVE_MISTAKES += [
    ("table rows max_len / page_size apart",
     [("block_tables + (long long)b * max_pages;",
       "block_tables + (long long)b * ((max_len + page_size - 1) / page_size);")],
     "look at what depends on b", ["your kernel computed nan"]),
]
NAIVE_MISTAKES += [
    ("whole pages, masked weights (0 * NaN)",
     [("    for (int j = 0; j <= t; ++j) {                   // causal: keys 0..t\n",
       "    for (int j = 0; j < (seq_lens[b] / page_size + 1) * page_size; ++j) {\n"),
      ("        score *= scale;\n", "        score *= scale;\n        if (j > t) score = NEG_INF;\n")],
     "0 * NaN is NaN"),
    ("acc of 32", [("float acc[MAX_HEAD_DIM];", "float acc[32];")], "acc[32] holds 32 values"),
    ("scaled twice", [("        score *= scale;\n", "        score *= scale * scale;\n")],
     "scaled twice"),
    # scale^2 = 1/head_dim where scale = 1/sqrt(head_dim): the hint named only "scaled twice"
    ("divided by head_dim", [("        score *= scale;\n", "        score /= head_dim;\n")],
     "or divided by head_dim"),
    ("padding zeroed for d < 8 only", [("for (int d = 0; d < head_dim; ++d) out[row + d] = 0.0f;",
                                        "for (int d = 0; d < 8; ++d) out[row + d] = 0.0f;")],
     "only dims 0..7", ["blockIdx.x * blockDim.x"]),
]

KERNEL_MISTAKES = (
    [("gather_kernel", "02_page_access.ipynb", "SOURCE_GATHER", *m) for m in GATHER_MISTAKES]
    + [("naive_kernel", "04_naive_kernel.ipynb", "SOURCE_NAIVE", *m) for m in NAIVE_MISTAKES]
    + [("tiled_kernel", "05_tiled_kernel.ipynb", "SOURCE_TILED", *m) for m in TILED_MISTAKES])
KERNEL_MISTAKES = [m if len(m) == 7 else (*m, ()) for m in KERNEL_MISTAKES]
KERNEL_IDS = [f"{m[0]}-{m[3]}" for m in KERNEL_MISTAKES]
# Mistakes that give the same wrong numbers on a GPU. The others are caught by the CPU
# executor's strict checks (bounds, barriers, races run deterministically) and may pass on a
# GPU by luck, which is why the checks offer device="cpu".
DETERMINISTIC = {"gather_kernel-head stride", "gather_kernel-shared table",
                 "gather_kernel-no stride loop", "gather_kernel-no zeros",
                 # (counted on the CPU executor on either device, as the puzzles are)
                 "gather_kernel-every thread copies the whole row",
                 "gather_kernel-thread 0 copies the row alone",
                 "naive_kernel-no scale", "naive_kernel-no causal mask",
                 "naive_kernel-mask one short", "naive_kernel-shared table",
                 "naive_kernel-head stride", "naive_kernel-GQA as modulo", "naive_kernel-INFINITY",
                 "naive_kernel-padding not zeroed", "naive_kernel-token index",
                 "naive_kernel-no rescale", "naive_kernel-max starts at 0",
                 "tiled_kernel-no causal mask", "tiled_kernel-head stride", "tiled_kernel-no scale"}
SOLUTION_KERNELS = [("gather_kernel", "02_page_access.ipynb", "SOURCE_GATHER"),
                    ("naive_kernel", "04_naive_kernel.ipynb", "SOURCE_NAIVE"),
                    ("tiled_kernel", "05_tiled_kernel.ipynb", "SOURCE_TILED")]


_EXP2 = [("expf(running_max - new_max)", "exp2f((running_max - new_max) * 1.44269504f)"),
         ("expf(score - new_max)", "exp2f((score - new_max) * 1.44269504f)")]
RIGHT_PREFILL = [   # (task, notebook, variable, name, edits): right kernels written another way
    ("naive_kernel", "04_naive_kernel.ipynb", "SOURCE_NAIVE", "exp2f of log2(e) times", _EXP2),
    ("tiled_kernel", "05_tiled_kernel.ipynb", "SOURCE_TILED", "exp2f of log2(e) times", _EXP2),
    ("naive_kernel", "04_naive_kernel.ipynb", "SOURCE_NAIVE", "the max in a first pass", [(
        "    float running_max = NEG_INF, running_sum = 0.0f;\n",
        "    float running_max = NEG_INF, running_sum = 0.0f;\n"
        "    for (int j = 0; j <= t; ++j) {\n"
        "        long long slot = (long long)table[j / page_size] * page_size + j % page_size;\n"
        "        long long kv = (slot * num_kv_heads + kv_head) * head_dim;\n"
        "        float score = 0.0f;\n"
        "        for (int d = 0; d < head_dim; ++d) score += q[row + d] * k_cache[kv + d];\n"
        "        running_max = fmaxf(running_max, score * scale);\n"
        "    }\n")]),
]


@pytest.mark.parametrize("task, notebook, variable, name, edits", RIGHT_PREFILL,
                         ids=[f"{m[0]}-{m[3]}" for m in RIGHT_PREFILL])
def test_prefill_check_passes_a_right_kernel_written_differently(task, notebook, variable, name,
                                                                 edits):
    result, printed = run_check(task, mutate(solution_source(notebook, variable), edits),
                                device="cpu")
    assert result.passed, printed


@pytest.mark.parametrize("task, notebook, variable, name, edits, phrase, not_phrases",
                         KERNEL_MISTAKES, ids=KERNEL_IDS)
def test_kernel_mistake_is_caught(task, notebook, variable, name, edits, phrase, not_phrases):
    source = mutate(solution_source(notebook, variable), edits)
    assert_caught(task, source, phrase, not_phrases=not_phrases, device="cpu")


@pytest.mark.parametrize("task, notebook, variable", SOLUTION_KERNELS)
def test_kernel_checks_pass_the_solution_and_report_the_stub(task, notebook, variable):
    result, printed = run_check(task, solution_source(notebook, variable), device="cpu")
    assert result.passed, printed
    result, printed = run_check(task, solution_source(notebook, variable, "exercises"),
                                device="cpu")
    assert result.status == "not attempted" and "not attempted" in printed
    assert "Traceback" not in printed


@pytest.mark.gpu
@pytest.mark.parametrize("task, notebook, variable", SOLUTION_KERNELS)
def test_kernel_checks_on_the_gpu(task, notebook, variable):
    assert_kernel_checks_on_the_gpu(
        task, notebook, variable,
        [(kid, m[4], m[5]) for m, kid in zip(KERNEL_MISTAKES, KERNEL_IDS)
         if m[0] == task and kid in DETERMINISTIC])


def test_endless_kernel_loop_is_stopped(monkeypatch):
    from pagedattn_lab.grading import kernel_runner
    monkeypatch.setattr(kernel_runner, "KERNEL_TIMEOUT", 1.0)
    source = mutate(solution_source("04_naive_kernel.ipynb", "SOURCE_NAIVE"),
                    [("for (int j = 0; j <= t; ++j)", "for (int j = 0; j <= t; )")])
    result, printed = run_check("naive_kernel", source, device="cpu")
    assert result.status == "failed" and len(result.cases) == 1
    assert "never ends" in printed and "did not finish" in printed


def test_compile_error_names_the_kernel_line():
    source = mutate(solution_source("04_naive_kernel.ipynb", "SOURCE_NAIVE"),
                    [("float score = 0.0f;", "float score = 0.0f")])
    result, printed = run_check("naive_kernel", source, device="cpu")
    assert result.status == "failed" and "does not compile" in printed
    assert len(result.cases) == 1  # reported once, no case run


def test_without_an_instrumenting_compiler_the_checks_still_run(monkeypatch):
    """Where the compiler cannot build the race check's instrumented library, the kernel
    checks fall back to the plain build (and say nothing false)."""
    from pagedattn_lab.cpu import kernel as cpu_kernel
    plain_compile = cpu_kernel.RawKernel.compile

    def no_instrumentation(self, instrumented=False):
        if instrumented:
            raise RuntimeError("-fsanitize=thread is not supported")
        return plain_compile(self)

    monkeypatch.setattr(cpu_kernel.RawKernel, "compile", no_instrumentation)
    result, printed = run_check("gather_kernel",
                                solution_source("02_page_access.ipynb", "SOURCE_GATHER"),
                                device="cpu")
    assert result.passed, printed


# The GPU's guard bands (kernel_runner.GUARD_BYTES): the bands after a launch, as bytes.
def _bands(before_hit=None, after_hit=None):
    before = np.full(kr.GUARD_BYTES, kr.GUARD_FILL, np.uint8)
    after = before.copy()
    if before_hit is not None:
        before[before_hit] = 0
    if after_hit is not None:
        after[after_hit] = 0
    return before, after


@pytest.mark.parametrize("before_hit, after_hit, index", [
    (None, None, None),                       # nothing outside the array
    (kr.GUARD_BYTES - 1, None, -1),           # the last byte before it: element -1
    (kr.GUARD_BYTES - 80, None, -20),         # a row of 20 float32 before it (slot -1)
    (None, 0, 25),                            # the first byte after 100 bytes of float32
    (None, 7, 26),
    (kr.GUARD_BYTES - 4, 3, -1),              # both: the first one before the start is told
])
def test_a_write_outside_an_array_is_found_in_its_bands(before_hit, after_hit, index):
    assert kr.band_write(*_bands(before_hit, after_hit), nbytes=100, itemsize=4) == index


def test_an_out_of_bounds_write_names_the_argument_and_the_side():
    exc = kr.OutOfBoundsWrite("k_cache", 6, -40)
    assert "before its start" in exc.message and "k_cache[-40]" in exc.message
    assert "below 0" in exc.hint
    assert "past its end" in kr.OutOfBoundsWrite("out", 2, 12).message


def test_an_argument_is_named_from_the_kernels_signature():
    k = kr.Kernel('extern "C" __global__ void copy(const float* src, float* dst, int n)\n'
                  '{ int i = threadIdx.x; if (i < n) dst[i] = src[i]; }\n', "copy", device="cpu")
    assert [k._param_name(i) for i in range(4)] == ["src", "dst", "n", "argument 3"]


UNSET_SHARED = r"""
extern "C" __global__ void read_unset_shared(float* out) {
    __shared__ float tile[256];   // never written: what the previous kernel left
    out[blockIdx.x * blockDim.x + threadIdx.x] = tile[threadIdx.x];
}
"""


def _leave_zeros_in_shared_memory():
    """A kernel that leaves zeros in every SM's shared memory (as many kernels do)."""
    import cupy as cp
    zeros = cp.RawKernel(r"""extern "C" __global__ void zero_shared(float* sink) {
        __shared__ float tile[256]; tile[threadIdx.x] = 0.0f; __syncthreads();
        if (threadIdx.x == 0) sink[blockIdx.x] = tile[255]; }""", "zero_shared")
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    zeros((4 * sms,), (256,), (cp.zeros(4 * sms, cp.float32),))


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_shared_memory_is_poisoned_before_a_learners_launch(device):
    """A tile element the learner never writes reads NaN (0xff bytes) on the GPU as on the CPU
    executor, even after a kernel that left zeros there (a K row left unzeroed passed so)."""
    if device == "gpu":
        _leave_zeros_in_shared_memory()
    kern = kr.Kernel(UNSET_SHARED, "read_unset_shared", device=device)
    (got,) = kern.launch((8,), (256,), (np.zeros(8 * 256, np.float32),), outputs=(0,))
    assert (got.view(np.uint32) == 0xFFFFFFFF).all(), np.unique(got.view(np.uint32))[:8]


# -- kernel_hints' branches that only a GPU run or a rare kernel reaches -------------------

def test_kernel_hints_name_what_the_output_and_source_show():
    from pagedattn_lab.grading import kernel_hints as kh
    from pagedattn_lab.grading.report import Mismatch
    with pytest.raises(Mismatch, match="the kernel wrote nothing") as caught:
        kh.nothing_written("__global__ void k(float* out) { if (0) out[0] = 1; }")
    assert "check the guards before it" in caught.value.hint
    expected = np.zeros((1, 4, 1, 2), np.float32)
    valid = (np.arange(4) < 2)[None, :, None, None]           # tokens 2, 3 are padding
    never = np.zeros(expected.shape, bool)
    data = expected.copy()
    data[0, 3] = 0.5                                           # attention past seq_len
    assert "must be zeros, but yours hold data" in kh.padding_hint(data, expected, valid, never)
    assert kh.padding_hint(expected.copy(), expected, valid, never) is None   # zeros: right
    nan = np.full(expected.shape, np.nan, np.float32)
    one_barrier = "__syncthreads(); // __syncthreads() in a comment does not count"
    assert "fewer than two __syncthreads() per page" in kh.nan_hint(
        nan, valid, never, shared_tile=True, source=one_barrier)
    assert "is every element of the tile" in kh.nan_hint(
        nan, valid, never, shared_tile=True, source=one_barrier + "\n__syncthreads();")
    # on a GPU no race check ran: the last-resort hint reads the barriers off the source
    assert "with one __syncthreads() per page" in kh.tiled_hint(one_barrier, racecheck=False)
    assert "look for a race" in kh.tiled_hint("__syncthreads(); __syncthreads();")
    assert "found no race" in kh.tiled_hint(one_barrier, racecheck=True)


def test_gather_kernel_check_passes_threads_that_share_the_row_head_by_head():
    """A right kernel whose 32 threads stride over each head's dims in turn (at head_dim 8,
    a thread stores one value per head, more than ceil(row_len / 32)): shared, so it passes."""
    per_head = [
        ("    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {\n"
         "        int kv_head = i / head_dim, d = i % head_dim;\n",
         "    for (int kv_head = 0; kv_head < num_kv_heads; ++kv_head)\n"
         "    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {\n"
         "        int i = kv_head * head_dim + d;\n")]
    source = mutate(solution_source("02_page_access.ipynb", "SOURCE_GATHER"), per_head)
    result, printed = run_check("gather_kernel", source, device="cpu")
    assert result.passed, printed
