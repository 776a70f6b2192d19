"""Workbook 06's checks fail the classic wrong answers, with a hint that names the mistake.

merge_partitions: wrong merges written here the way a learner gets them wrong. The two
kernels: the solution notebook's source with one mistake edited in (the edit must apply, so
these tests follow the solutions). Each case asserts that the check fails (not "not
attempted") and that the printed hint contains the phrase that points at the mistake.
"""
import numpy as np
import pytest

from tests.test_check_mistakes import assert_caught, mutate, run_check, solution_source
from tests.check_helpers import assert_kernel_checks_on_the_gpu

NOTEBOOK = "06_decode_kernel.ipynb"


def _w(m, l):
    return l * np.exp(m - m.max())


MERGE_MISTAKES = [
    ("no rescale", lambda m, l, o: l @ o / l.sum(), "bring them to one scale"),
    ("no sum weights", lambda m, l, o: np.exp(m - m.max()) @ o / np.exp(m - m.max()).sum(),
     "not exp(m_p - m) alone"),
    ("plain mean", lambda m, l, o: o.mean(axis=0), "treats every partition alike"),
    ("never divided", lambda m, l, o: _w(m, l) @ o, "divide by the sum of the weights"),
    ("o taken as unnormalized", lambda m, l, o: np.exp(m - m.max()) @ o / _w(m, l).sum(),
     "already divided by l_p"),
    ("exp of m itself", lambda m, l, o: (l * np.exp(m)) @ o / (l * np.exp(m)).sum(),
     "exp overflowed"),
    ("returns NaN", lambda m, l, o: np.full(o.shape[1], np.nan), "a nan your code computed"),
    ("keeps the partition axis", lambda m, l, o: (_w(m, l) @ o / _w(m, l).sum())[None],
     "one merged value per dimension"),
]


def _merge_scaling_l_in_place(m, l, o):
    l *= np.exp(m - m.max())        # right merge; the caller's l is now the weights
    return l @ o / l.sum()


def _merge_in_float32(m, l, o):
    w = (l * np.exp(m - m.max())).astype(np.float32)   # right up to float32's rounding, which
    return w @ o.astype(np.float32) / w.sum()          # failed one case with no dtype named


MERGE_MISTAKES += [("scales l in place", _merge_scaling_l_in_place, "changed its input l"),
                   ("merged in float32", _merge_in_float32, "keep the merge in float64")]
# hunt 66: exp(m_p - m_last) is right while the last partition holds the largest max, as it
# did in every case; a partition far below the ones before it overflows it
MERGE_MISTAKES += [("rescaled by the last partition's max",
                    lambda m, l, o: (l * np.exp(m - m[-1])) @ o / (l * np.exp(m - m[-1])).sum(),
                    "exponentiate m_p - max_p m_p")]

PARTITION_MISTAKES = [
    ("GQA as modulo", [("h / (num_heads / num_kv_heads)", "h % num_kv_heads")],
     "not h % num_kv_heads"),
    ("GQA ignored", [("int kv_head = h / (num_heads / num_kv_heads);", "int kv_head = h;")],
     "not kv head h"),
    ("no scale", [("q_row[d] * scale", "q_row[d]")], "not scaled"),
    ("reads past seq_len", [("int end = min(seq_len, start + part_len);",
                             "int end = start + part_len;")], "past seq_len",
     ["max_parts apart"]),   # its fault reaches the padding a row read max_parts apart does
    ("inclusive end", [("t < end; ++t", "t <= end; ++t")], "one token past its end"),
    ("starts one late", [("int start = part * part_len;", "int start = part * part_len + 1;")],
     "skips its first token"),
    ("dot reduced from offset 8 (half the warp)", [("int offset = 16;", "int offset = 8;")],
     "first offset must be 16", ["part_out[b, h, p] must be"]),
    ("dot reduced down to offset 2 only", [("offset > 0;", "offset > 1;")],
     "must run down to offset 1", ["part_out[b, h, p] must be"]),
    ("acc not rescaled", [("acc[i] = acc[i] * rescale +", "acc[i] = acc[i] +")],
     "rescale the accumulator"),
    ("sum not rescaled", [("l = l * rescale + weight;", "l = l + weight;")],
     "rescale the running sum"),
    ("max starts at 0", [("float m = NEG_INF, l = 0.0f;", "float m = 0.0f, l = 0.0f;")],
     "not 0"),
    # the case of scores far below -88 shows it in part_out too (a float32 expf underflows)
    ("max starts at 0 (scores far below -88)", [("float m = NEG_INF, l = 0.0f;",
                                                 "float m = 0.0f, l = 0.0f;")],
     "every score here is far below -88"),
    ("no max subtracted", [("expf(m - m_new)", "1.0f"), ("expf(dot - m_new)", "expf(dot)")],
     "l is the sum of expf(score)", ["part_ml[b, h, p] holds (m, l)"]),
    ("no max subtracted, m stored as 0", [("expf(m - m_new)", "1.0f"),
                                          ("expf(dot - m_new)", "expf(dot)"),
                                          ("m = m_new;", "m = 0.0f;")],
     "no max is subtracted", ["part_ml[b, h, p] holds (m, l)"]),
    ("lanes return early", [("    int seq_len = seq_lens[b];",
                             "    if (lane >= head_dim) return;\n    int seq_len = seq_lens[b];")],
     "every lane must reach every __shfl"),
    ("first 32 dims only", [("if (d < head_dim) part_out", "if (d < head_dim && i == 0) part_out")],
     "dims 32 and up were never written"),
    ("o not normalized", [("= acc[i] / l;", "= acc[i];")], "divide the accumulator by l"),
    ("every lane reads whole rows", [(
        "        float dot = 0.0f;\n"
        "        for (int i = 0; i < MAX_DIMS_PER_LANE; ++i) {\n"
        "            int d = lane + 32 * i;\n"
        "            if (d < head_dim) dot += my_q[i] * k_cache[row + d];\n"
        "        }\n"
        "        for (int offset = 16; offset > 0; offset /= 2)     // every lane gets the full dot\n"
        "            dot += __shfl_xor_sync(0xffffffffu, dot, offset);",
        "        float dot = 0.0f;\n"
        "        for (int d = 0; d < head_dim; ++d) dot += q_row[d] * scale * k_cache[row + d];")],
     "every lane reads whole rows"),
    ("m in base 2", [("part_ml[slot_out * 2] = m;", "part_ml[slot_out * 2] = m * 1.442695f;")],
     "log2(e) times"),
]

MERGE_KERNEL_MISTAKES = [
    ("no rescale", [("float w = ml[2 * p + 1] * expf(ml[2 * p] - m_all);",
                     "float w = ml[2 * p + 1];")], "bring them to one scale"),
    ("no sum weights", [("float w = ml[2 * p + 1] * expf(ml[2 * p] - m_all);",
                         "float w = expf(ml[2 * p] - m_all);")], "not exp(m_p - m) alone"),
    ("partitions rounded down", [("(seq_lens[b] + part_len - 1) / part_len",
                                  "seq_lens[b] / part_len")], "last, shorter partition"),
    ("one partition too many", [("(seq_lens[b] + part_len - 1) / part_len",
                                 "seq_lens[b] / part_len + 1")], "count the partitions"),
    ("no stride over dims", [("d < head_dim; d += blockDim.x", "d < 32 && d < head_dim; ++d")],
     "dims 32 and up were never written"),
    ("exp of m itself", [("expf(ml[2 * p] - m_all)", "expf(ml[2 * p])")], "overflows float32"),
    ("never divided", [("out[row * head_dim + d] = o / total;", "out[row * head_dim + d] = o;")],
     "divide by the sum of the weights"),
]

# -- dims rounded down, scale twice, NaN hints, leftovers, an empty max --------------------------

_DIM_LOOPS = [(f"for (int i = 0; i < MAX_DIMS_PER_LANE; ++i) {{\n{pad}int d = lane + 32 * i;"
               f"\n{pad}{tail}",
               f"for (int i = 0; i < max(1, head_dim / 32); ++i) {{\n{pad}int d = lane + 32 * i;"
               f"\n{pad}{tail}")
              for pad, tail in (("            ", "if (d < head_dim) dot"),
                                ("            ", "acc[i]"),
                                ("        ", "if (d < head_dim) part_out"))]

PARTITION_MISTAKES += [
    ("dims per lane rounded down", _DIM_LOOPS, "head_dim / 32 rounds down"),
    ("scale twice", [("float m_new = fmaxf(m, dot);", "dot *= scale;\n        float m_new = "
                      "fmaxf(m, dot);")], "scaled twice"),
    # scale^2 = 1/head_dim where scale = 1/sqrt(head_dim): the hint named only "twice"
    ("divided by head_dim", [("my_q[i] = d < head_dim ? q_row[d] * scale",
                              "my_q[i] = d < head_dim ? q_row[d] / head_dim")],
     "or divided by head_dim"),
    ("rescale exponent flipped", [("expf(m - m_new);", "expf(m_new - m);")],
     "never expf(m_new - m)", ["the partition read a token at or past seq_len"]),
    ("page offset by bit mask", [("+ t % page_size;", "+ (t & (page_size - 1));")],
     "softmax(scores of partition p)"),
]

# hunt 66: the guide's head stride (no num_kv_heads) reads slots no sequence uses (NaN): the
# hint named only a read past the partition's end or the online softmax
PARTITION_MISTAKES += [
    ("head stride without num_kv_heads",
     [("long long row = (slot * num_kv_heads + kv_head) * head_dim;",
       "long long row = slot * head_dim + kv_head * head_dim;")],
     "the head stride is missing num_kv_heads"),
    # hunt 66: right states at the wrong rows; the hint said part_out must be the softmax
    ("states stored sequence-minor", [
        ("long long slot_out = ((long long)b * num_heads + h) * max_parts + part;",
         "long long slot_out = ((long long)h * gridDim.z + b) * max_parts + part;")],
     "stored at another partition's slot", ["must be softmax(scores of partition p)"]),
]

# No early return for a partition that does not exist: (m, l) = (-inf, 0) and 0 / 0 land in a
# slot the spec leaves alone, and the check read only the partitions that exist.
PARTITION_MISTAKES += [
    ("writes partitions that do not exist", [("if (start >= seq_len) return;", "")],
     "partition 2 of sequence 1 does not exist"),
    # hunt 66: `>` lets the partition starting at seq_len write; it passed, no case having a
    # sequence whose length is a multiple of part_len and shorter than the longest
    ("returns only past seq_len", [("if (start >= seq_len) return;",
                                    "if (start > seq_len) return;")],
     "would start at token 16, at or past seq_len 16"),
]

MERGE_KERNEL_MISTAKES += [
    ("max starts at 0", [("float m_all = NEG_INF;", "float m_all = 0.0f;")], "far below -88"),
    ("every slot read, NaN skipped", [
        ("for (int p = 0; p < n_parts; ++p) m_all", "for (int p = 0; p < max_parts; ++p) m_all"),
        ("for (int p = 0; p < n_parts; ++p) {\n            float w",
         "for (int p = 0; p < max_parts; ++p) {\n            if (!(ml[2 * p + 1] > 0.0f)) "
         "continue;\n            float w")], "all max_parts"),
    # right (before the fix) while the leftovers' m sat just above the real ones (the weights' ratio
    # does not change); leftovers far above underflow every real weight.
    ("max over every slot, sums over the partitions", [
        ("for (int p = 0; p < n_parts; ++p) m_all", "for (int p = 0; p < max_parts; ++p) m_all")],
     "the max m was taken over all max_parts"),
    ("dims rounded down", [("for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {",
                            "for (int i = 0; i < max(1, head_dim / 32); ++i) {\n"
                            "        int d = threadIdx.x + 32 * i; if (d >= head_dim) break;")],
     "head_dim / 32 rounds down"),
    ("out row times max_parts", [("out[row * head_dim + d]",
                                  "out[(row * max_parts) * head_dim + d]")],
     "out is [batch, num_heads, head_dim]", ["max_len"]),
    # hunt 66: the hint named only expf(m_p) with no max subtracted, which gives the same NaN
    # in that case; now both, as several_fit words them
    ("last partition's m as the max",
     [("for (int p = 0; p < n_parts; ++p) m_all = fmaxf(m_all, ml[2 * p]);",
       "m_all = ml[2 * (n_parts - 1)];")], "check each: (1) m must be the largest m_p of the "
     "row, not the last partition's"),
]

KERNELS = [("decode_partition", "SOURCE_PARTITION", m) for m in PARTITION_MISTAKES] + \
          [("decode_merge", "SOURCE_MERGE", m) for m in MERGE_KERNEL_MISTAKES]


@pytest.mark.parametrize("name, impl, phrase", MERGE_MISTAKES, ids=[m[0] for m in MERGE_MISTAKES])
def test_merge_mistake_is_caught(name, impl, phrase):
    assert_caught("merge_partitions", impl, phrase)


@pytest.mark.parametrize("task, variable, mistake", KERNELS,
                         ids=[f"{t}-{m[0]}" for t, _, m in KERNELS])
def test_kernel_mistake_is_caught(task, variable, mistake):
    _, edits, phrase, *not_phrases = mistake
    assert_caught(task, mutate(solution_source(NOTEBOOK, variable), edits), phrase,
                  not_phrases=not_phrases[0] if not_phrases else (), device="cpu")


@pytest.mark.parametrize("task, variable", [("decode_partition", "SOURCE_PARTITION"),
                                            ("decode_merge", "SOURCE_MERGE")])
def test_kernel_checks_pass_the_solution_and_report_the_stub(task, variable):
    result, printed = run_check(task, solution_source(NOTEBOOK, variable), device="cpu")
    assert result.passed, printed
    result, printed = run_check(task, solution_source(NOTEBOOK, variable, "exercises"),
                                device="cpu")
    assert result.status == "not attempted" and "Traceback" not in printed


# Caught on the GPU by its own evidence (the guard bands after out, or wrong values where the
# CPU executor faults or names the partition count), not by the CPU's phrase.
GPU_OTHER_EVIDENCE = {"one partition too many", "out row times max_parts"}


@pytest.mark.gpu
@pytest.mark.parametrize("task, variable", [("decode_partition", "SOURCE_PARTITION"),
                                            ("decode_merge", "SOURCE_MERGE")])
def test_kernel_checks_on_the_gpu(task, variable):
    assert_kernel_checks_on_the_gpu(task, NOTEBOOK, variable,
                                    [m[:3] for t, _, m in KERNELS if t == task],
                                    other_evidence=GPU_OTHER_EVIDENCE)


def test_merge_check_passes_a_correct_merge_written_differently():
    def log_sum_exp_merge(m, l, o):
        log_w = np.log(l) + m
        w = np.exp(log_w - log_w.max())
        return (w[:, None] * o).sum(axis=0) / w.sum()
    result, printed = run_check("merge_partitions", log_sum_exp_merge)
    assert result.passed, printed


@pytest.mark.parametrize("edits", [
    [("float total = 0.0f, o = 0.0f;", "double total = 0.0, o = 0.0;")],
    [("(seq_lens[b] + part_len - 1) / part_len", "(seq_lens[b] - 1) / part_len + 1")],
], ids=["double sums", "partition count written differently"])
def test_merge_kernel_passes_correct_variants(edits):
    result, printed = run_check("decode_merge", mutate(solution_source(NOTEBOOK, "SOURCE_MERGE"),
                                                       edits), device="cpu")
    assert result.passed, printed


RIGHT_PARTITIONS = [   # (name, edits of the solution): right kernels written another way
    ("xor offsets upward", [("for (int offset = 16; offset > 0; offset /= 2)",
                             "for (int offset = 1; offset < 32; offset *= 2)")]),
    ("weights by exp2f of log2(e) times the score", [
        ("expf(m - m_new)", "exp2f((m - m_new) * 1.4426950408889634f)"),
        ("expf(dot - m_new)", "exp2f((dot - m_new) * 1.4426950408889634f)")]),
]


@pytest.mark.parametrize("name, edits", RIGHT_PARTITIONS, ids=[m[0] for m in RIGHT_PARTITIONS])
def test_partition_check_passes_a_right_kernel_written_differently(name, edits):
    result, printed = run_check("decode_partition",
                                mutate(solution_source(NOTEBOOK, "SOURCE_PARTITION"), edits),
                                device="cpu")
    assert result.passed, printed


def test_partition_kernel_whose_every_lane_stores_m_and_l_passes():
    """The prompt asks for (m, l) in part_ml, not for one lane to store them: 32 lanes storing
    the same two values are right (and one request on a GPU), so the check does not count
    part_ml's stores."""
    source = mutate(solution_source(NOTEBOOK, "SOURCE_PARTITION"), [("if (lane == 0) {", "{")])
    result, printed = run_check("decode_partition", source, device="cpu")
    assert result.passed, printed


def test_every_task_has_three_mistakes():
    counts = {"merge_partitions": len(MERGE_MISTAKES)}
    for task, _, _ in KERNELS:
        counts[task] = counts.get(task, 0) + 1
    from pagedattn_lab.lessons import lesson
    assert {t: counts.get(t, 0) >= 3 for t in lesson("06").tasks} == \
        dict.fromkeys(lesson("06").tasks, True)
