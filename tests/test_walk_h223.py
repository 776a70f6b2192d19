"""Workbooks 04, 05 and 06 walked as a learner, wrong answers first: mistakes whose check used to
print only the general recipe, the bare "read the error above", or a hint naming another
mistake, now get a hint that names them.

Workbook 04: an online softmax on math.exp (which raises OverflowError where np.exp gives
inf) with no max, or with an exponent the running max does not keep at or below 0; acc
assigned each key's term instead of adding it; l and acc restarted by a new max; in
attend_one, page and offset swapped, the guide's head stride without num_kv_heads, and the
NaN a wrong read brings from the cache's unused slots (no evidence of any one mistake).
Workbook 05: a tiled kernel whose last page stops at seq_len rather than keys_needed (right
values; the counted case's pages of 12 tokens now end a tile mid-page). Workbook 06: a running merge that sets its max before taking the rescale factor.
"""
import math

import numpy as np
import pytest

from tests.check_helpers import assert_caught, mutate, run_check, solution_source


class _Online:
    """The online softmax as written right, on math.exp; subclasses make one mistake."""

    def __init__(self, head_dim):
        self.m, self.l, self.acc = -math.inf, 0.0, np.zeros(head_dim)

    def step(self, score):
        m_new = max(self.m, score)
        return m_new, math.exp(self.m - m_new), math.exp(score - m_new)

    def update(self, score, value):
        m_new, alpha, p = self.step(score)
        self.l, self.acc, self.m = self.l * alpha + p, self.acc * alpha + p * value, m_new

    def result(self):
        return self.acc / self.l


class RawExp(_Online):
    def update(self, score, value):
        p = math.exp(score)
        self.l, self.acc = self.l + p, self.acc + p * value


class RunningMin(_Online):
    def step(self, score):
        m_new = score if self.m == -math.inf else min(self.m, score)
        alpha = 0.0 if self.m == -math.inf else math.exp(self.m - m_new)
        return m_new, alpha, math.exp(score - m_new)


class AccAssigned(_Online):
    def update(self, score, value):
        m_new, alpha, p = self.step(score)
        self.l, self.acc, self.m = self.l * alpha + p, p * value, m_new


class RestartOnNewMax(_Online):
    def update(self, score, value):
        if score > self.m:
            self.m, self.l, self.acc = score, 1.0, value.copy()
            return
        p = math.exp(score - self.m)
        self.l, self.acc = self.l + p, self.acc + p * value


def test_raw_math_exp_is_named_where_it_raises_and_where_it_underflows():
    result, printed = assert_caught("online_softmax", RawExp, "you exponentiate the raw score",
                                    not_phrases=("start the running max at -inf",
                                                 "read the error above"))
    assert "raised OverflowError" in " ".join(printed.split()), printed


def test_an_exponent_above_zero_is_named_not_read_the_error():
    assert_caught("online_softmax", RunningMin, "a max, not a min",
                  not_phrases=("read the error above",))


def test_acc_assigned_instead_of_added():
    assert_caught("online_softmax", AccAssigned, "not assign it",
                  not_phrases=("after each update, acc / l must equal",))


def test_a_new_max_restarting_the_sums():
    result, printed = assert_caught("online_softmax", RestartOnNewMax,
                                    "restarts l and acc from that key alone",
                                    not_phrases=("after each update, acc / l must equal",))
    rising = next(c for c in result.cases if c.name.startswith("rising"))
    assert "these mistakes give the same result here" in rising.hint, printed


def _attend(page_and_offset=None, flat_index=None):
    def attend_one(q_vec, k_cache, v_cache, row, seq_len, t, kv_head, scale):
        page_size, _, head_dim = k_cache.shape[1:]
        keys, values = [], []
        for j in range(t + 1):
            if flat_index is not None:
                at = flat_index(row, j, page_size, kv_head)
                keys.append(k_cache.reshape(-1, head_dim)[at])
                values.append(v_cache.reshape(-1, head_dim)[at])
                continue
            page, offset = page_and_offset(row, j, page_size, t)
            keys.append(k_cache[page, offset, kv_head])
            values.append(v_cache[page, offset, kv_head])
        s = np.array(keys, np.float64) @ q_vec.astype(np.float64) * scale
        w = np.exp(s - s.max())
        return w @ np.array(values, np.float64) / w.sum()
    return attend_one


def test_attend_one_page_and_offset_swapped():
    assert_caught("attend_one", _attend(lambda row, j, p, t: (row[j % p], j // p)),
                  "yours swaps / and %", not_phrases=("loop j = 0..t: slot",))


def test_attend_one_head_stride_without_num_kv_heads():
    assert_caught("attend_one",
                  _attend(flat_index=lambda row, j, p, kvh: row[j // p] * p + j % p + kvh),
                  "the head stride is missing num_kv_heads",
                  not_phrases=("loop j = 0..t: slot",))


def test_attend_one_nan_from_the_unused_slots_names_no_offset():
    # every key read from the query's own page: in the NaN-filled case it reads the page's
    # NaN tail, as an offset one too far would, which is no evidence of that offset
    result, printed = run_check("attend_one", _attend(lambda row, j, p, t: (row[t // p], j % p)))
    nan_case = next(c for c in result.cases if c.name.startswith("unused cache slots"))
    assert not nan_case.passed, printed
    assert "offset is off by one" not in nan_case.hint, printed


def stale_running_merge(m, l, o):
    top, total, acc = -np.inf, 0.0, np.zeros(o.shape[1])
    for m_p, l_p, o_p in zip(m, l, o):
        top = max(top, m_p)
        alpha, w = np.exp(top - top), l_p * np.exp(m_p - top)
        total, acc = total * alpha + w, acc * alpha + w * o_p
    return acc / total


def test_a_running_merge_that_sets_its_max_before_the_rescale():
    result, printed = assert_caught("merge_partitions", stale_running_merge,
                                    "sets the max before it takes the rescale factor",
                                    not_phrases=("must equal softmax(all scores)",))
    rising = next(c for c in result.cases if c.name.startswith("the max grows"))
    assert "these mistakes give the same result here" in rising.hint, printed


def test_tiled_last_page_bounded_by_seq_len_not_keys_needed():
    # right values (the extra keys are real and never weighed); only the counted loads show it
    source = mutate(solution_source("05_tiled_kernel.ipynb", "SOURCE_TILED"),
                    [("int n_keys = min(page_size, keys_needed - first_key);",
                      "int n_keys = min(page_size, seq_len - first_key);")])
    result, printed = assert_caught("tiled_kernel", source, "stops at seq_len, not at keys_needed",
                                    device="cpu")
    assert [c.passed for c in result.cases].count(False) == 1, printed


def test_a_race_checked_write_past_dynamic_shared_memory_names_it():
    # the race check sees stores before they happen and failed this one as a wild write
    from pagedattn_lab.cpu import KernelFault
    from tests.test_cpu_executor import kern
    with pytest.raises(KernelFault) as info:
        kern("bugs.cu", "needs_smem")(1, 32, (np.zeros(32, np.float32),), shared_mem=16 * 4,
                                      racecheck=True)
    assert info.value.region == "dynamic shared memory", str(info.value)
    assert "byte offset 64; the launch gave shared_mem=64 bytes" in str(info.value)


def test_a_tile_indexed_past_the_shared_memory_is_named():
    source = mutate(solution_source("05_tiled_kernel.ipynb", "SOURCE_TILED"),
                    [("float* v_tile = smem + page_size * head_dim;",
                      "float* v_tile = smem + page_size * head_dim + head_dim;")])
    assert_caught("tiled_kernel", source, "bytes of dynamic shared memory (shared_mem)",
                  not_phrases=("check how that buffer's index is computed",), device="cpu")


def _partition(edits):
    return mutate(solution_source("06_decode_kernel.ipynb", "SOURCE_PARTITION"), edits)


def test_partitions_that_run_on_to_seq_len():
    assert_caught("decode_partition",
                  _partition([("int end = min(seq_len, start + part_len);", "int end = seq_len;")]),
                  "every partition here runs on to the sequence's end",
                  not_phrases=("must be softmax(scores of partition p)",), device="cpu")


def test_m_and_l_stored_swapped():
    assert_caught("decode_partition",
                  _partition([("part_ml[slot_out * 2] = m;", "part_ml[slot_out * 2] = l;"),
                              ("part_ml[slot_out * 2 + 1] = l;", "part_ml[slot_out * 2 + 1] = m;")]),
                  "m and l are swapped", device="cpu")
