"""Mutation testing (helper 133) of the modules hunts 124-130 changed: each test here kills a
mutant the existing tests let live (named in its comment), and passes on the real code."""
import numpy as np
import pytest

from pagedattn_lab import quant
from pagedattn_lab.validate_scale import FLOAT32_TINY

TINY = np.float32(FLOAT32_TINY)


# -- quant ---------------------------------------------------------------------------------------

def test_the_first_subnormal_scale_is_named_not_the_last():
    # mutant: _refuse_bad_scales named tiny[-1]
    x = np.ones((2, 3, 4), np.float32)
    scale = np.array([1.0, TINY / 2, TINY / 4], np.float32)
    with pytest.raises(ValueError, match=r"scale\[1\] is "):
        quant.quantize(x, "int8", scale)


@pytest.mark.parametrize("scheme", ["per_token", "static"])
def test_quantize_rows_reads_subnormal_values_as_zero(scheme):
    # mutant: quantize_rows divided the unflushed x (a subnormal over a scale near the
    # smallest normal is a code the -ftz kernel never writes)
    x = np.zeros((1, 1, 4), np.float32)
    x[0, 0] = [1e-37, 1e-39, -1e-39, 0.0]
    codes, scales = quant.quantize_rows(x, "fp8_e4m3", scheme, np.array([TINY], np.float32))
    assert scales.min() >= TINY
    assert codes[0, 0, 1] == 0 and codes[0, 0, 2] in (0, 0x80), codes
    assert np.array_equal(codes[0, 0, 1:], quant.encode(np.float32([0.0, -0.0, 0.0]),
                                                      "fp8_e4m3"))


def test_quantize_reads_subnormal_values_as_zero():
    # mutant: quantize divided the unflushed x
    x = np.float32([[[1e-39, -1e-39, 1.0]]])
    codes = quant.quantize(x, "fp8_e4m3", np.array([TINY], np.float32))
    assert np.array_equal(codes[0, 0, :2], quant.encode(np.float32([0.0, -0.0]), "fp8_e4m3"))


# -- backend.check_contiguous --------------------------------------------------------------------

def test_a_strided_kernel_argument_is_named_by_where_and_fixed_by_name():
    # mutants: the message led with `name` instead of `where`; the fix copied `where`
    from pagedattn_lab.signature import check_launch_args, parse_kernel_signature
    src = 'extern "C" __global__ void f(const float* x, int n) {}'
    sig = parse_kernel_signature(src, "f")
    strided = np.zeros((4, 4), np.float32).T
    with pytest.raises(ValueError) as info:
        check_launch_args(sig, (strided, np.int32(4)), "f", (np.ndarray,))
    msg = str(info.value)
    assert msg.startswith("kernel 'f', argument 0 of 2 ('x', const float*): expected a "
                          "C-contiguous array"), msg
    assert msg.endswith("call np.ascontiguousarray(x) first"), msg


# -- grading hints (hunt 124's) ------------------------------------------------------------------

def _group_rows_times(f, first_only=False):
    def group_rows(q, kv_head, group):
        rows = q[kv_head * group:(kv_head + 1) * group].copy()
        if first_only:
            rows[0, 0] = rows[0, 0] * q.dtype.type(f)
        else:
            rows = rows * q.dtype.type(f)
        return np.pad(rows, ((0, (-group) % 16), (0, 0))).reshape(-1, 16, q.shape[1])
    return group_rows


@pytest.mark.parametrize("impl", [_group_rows_times(1.0001, first_only=True),
                                  _group_rows_times(np.inf)], ids=["one_value_off", "all_inf"])
def test_group_rows_off_by_no_factor_is_not_told_a_factor(impl):
    # mutants: _factor_hint without its isclose(factor, 1) or its isfinite guard (a row with
    # one value off was "the right heads times 1"; rows of inf "times inf")
    from tests.check_helpers import assert_caught
    assert_caught("group_rows", impl, "row r of tile t is query head",
                  not_phrases=("the right heads times",))


def test_an_inverted_mask_is_named_on_the_tile_that_holds_seq_len():
    # mutant: the inverted-comparison variant masked cols > seq_len (it then fit only tiles
    # that seq_len does not cut, whose hints name other things)
    from tests.check_helpers import run_check

    def mask_tile(s, tile, seq_len, scale):
        logits = s * np.float32(scale)
        logits[:, 16 * tile + np.arange(16) < seq_len] = -np.inf
        return logits
    result, printed = run_check("mask_tile", mask_tile)
    cut = [c for c in result.cases if not c.passed
           and 0 < c.params["seq_len"] - 16 * c.params["tile"] < 16]
    assert cut, printed
    for c in cut:
        assert "the comparison is inverted" in " ".join(c.hint.split()), printed


def test_a_wrong_scale_without_the_mask_is_not_told_the_mask_is_right():
    # mutant: _factor_hint without its check that the masked columns are -inf
    from tests.check_helpers import run_check

    def mask_tile(s, tile, seq_len, scale):
        return s * np.float32(0.25)   # no mask, and 1 / sqrt(16) for the scale
    result, printed = run_check("mask_tile", mask_tile)
    unmasked = [c for c in result.cases if not c.passed
                and c.params["seq_len"] < 16 * (c.params["tile"] + 1)]
    assert unmasked, printed
    for c in unmasked:   # (a tile seq_len does not reach needs no mask: that one is right)
        assert "the mask is right" not in " ".join(c.hint.split()), printed


# -- prefix_cache.int64_token ---------------------------------------------------------------------

def test_int64s_own_ends_are_token_ids_and_the_first_past_them_is_named():
    # mutants: int64_token refused INT64_MIN or INT64_MAX themselves (an object list, one
    # entry past int64, took every entry through it), or hash_block named the last uint64
    # entry past int64, or refused 2**63 - 1 held as uint64
    from pagedattn_lab.engine.prefix_cache import hash_block
    lo, hi = -2**63, 2**63 - 1
    for ids, bad in (([lo, hi, 2**63], 2), ([hi, lo, -2**63 - 1], 2),
                     (np.array([1, 2**63, 2**64 - 1], np.uint64), 1)):
        with pytest.raises(ValueError, match=rf"^token_ids\[{bad}\]: expected a token id that "
                                             rf"fits int64"):
            hash_block(None, ids)
    assert hash_block(None, np.array([hi], np.uint64)) == hash_block(None, [hi])


# -- engine_step_rules: subtract_held -------------------------------------------------------------

def test_the_charged_whole_rule_charges_every_page_the_tokens_fill():
    # mutant: with subtract_held off, one page was still subtracted (the rule then modelled
    # no learner's mistake: a request holding 2 pages, growing to 5 tokens of 4-token pages,
    # is charged 2, not 1, leaving 0 of 2 free pages for the waiting one)
    from types import SimpleNamespace as R
    from pagedattn_lab.grading.engine_step_rules import reference_step
    running = [R(rid=0, num_tokens=5, num_computed=4, num_pages=2)]
    waiting = [R(rid=1, num_tokens=1, num_computed=0, num_pages=0)]
    args = (running, waiting, 8, 2, 0, 4, 8)
    assert reference_step(*args) == [(0, 1), (1, 1)]
    assert reference_step(*args, subtract_held=False) == [(0, 1)]


# -- sim_memory.watermark_pages --------------------------------------------------------------------

def _fixed(prompts, outputs, **fields):
    from pagedattn_lab.sim import Workload

    class Fixed(Workload):
        def sample(self):
            return np.array(prompts), np.array(outputs)
    return Fixed(num_requests=len(prompts), min_len=1, **fields)


def test_sim_keeps_the_watermark_rounded_down_free_while_a_request_runs():
    # mutants: the watermark's pages rounded up (0.15 of 10 pages kept 2 free), or none kept
    # (reserve_pages = 0). 10 one-token pages; A takes 4; B fits beside it with 1 page kept
    # free (5 + 1 <= 6) and not with 2; a B of 6 fits only with none kept.
    from pagedattn_lab.sim import simulate
    res = simulate("paged", _fixed([4, 5], [1, 1], prompt_max=5, max_len=10),
                   capacity_tokens=10, page_size=1, watermark=0.15)
    assert res.series["running"].tolist()[0] == 2
    res = simulate("paged", _fixed([4, 6], [1, 1], prompt_max=6, max_len=10),
                   capacity_tokens=10, page_size=1, watermark=0.15)
    assert res.series["running"].tolist()[0] == 1


def test_sim_counts_a_prompts_partial_page_when_it_checks_the_watermark_fits():
    # mutant: _check_paged_fits counted prompt_max // page_size pages (a prompt of 7 tokens
    # takes 2 pages of 4; with 1 of 2 kept free it can never be admitted beside another)
    from pagedattn_lab.sim import simulate
    with pytest.raises(ValueError, match=r"^watermark: 0\.5 of 2 pages kept free leaves too "
                                         r"few for a prompt of prompt_max=7 tokens$"):
        simulate("paged", _fixed([7], [1], prompt_max=7, max_len=8), capacity_tokens=8,
                 page_size=4, watermark=0.5)


# -- grading/wire.py: the count of ints past 2**61 -------------------------------------------------

def test_only_ints_past_2_61_count_toward_the_limit():
    # mutants: small negative ints counted as huge (0 <= tree < modulus), or only ints past
    # 2**64 counted (the modulus taken as 1 << 64)
    from pagedattn_lab.grading import remote_errors, wire
    small = list(range(-2 * wire.MAX_HUGE_INTS, 0))
    assert wire.decode(small, [], remote_errors.no_deref) == small
    for sign in (1, -1):
        past = [sign * (2 ** 62 + k) for k in range(wire.MAX_HUGE_INTS + 1)]
        with pytest.raises(wire.ProtocolError, match="ints of magnitude 2"):
            wire.decode(past, [], remote_errors.no_deref)


# -- grading/checks_addressing.py: the timed gather ------------------------------------------------

class _LazyVectorized:
    """A right result whose __array__ does a vectorized gather when it is read."""

    def __init__(self, k_cache, block_table_row, seq_len):
        self.inputs = (np.asarray(k_cache).copy(), np.asarray(block_table_row).copy(), seq_len)

    def __array__(self, dtype=None, copy=None):
        k_cache, row, seq_len = self.inputs
        t = np.arange(seq_len)
        out = k_cache.reshape(-1, *k_cache.shape[2:])[
            row[t // k_cache.shape[1]] * k_cache.shape[1] + t % k_cache.shape[1]]
        return out if dtype is None else out.astype(dtype)


def test_a_right_result_read_lazily_still_passes_the_timed_case():
    # mutants: the timed call kept `got` as returned (not read as an array inside it): a
    # right answer of an object with __array__ was then never "their gather", no call's
    # time counted, and a vectorized answer failed the timed case
    from tests.test_grade_protocol import in_notebook
    result = in_notebook("gather_numpy", _LazyVectorized)
    assert result.status == "passed", result.summary


# -- cpu/source.py guard_static_shared, cpu/report_checks.py _subscript_from ----------------------

def test_every_static_shared_declaration_gets_its_guard():
    # mutants: declarations only at a line's start (not after `{` or `;` on one line), or
    # `static` no longer among the specifiers (`static __shared__` got no guard)
    from pagedattn_lab.cpu.source import guard_static_shared
    src = ("{ __shared__ float a[4]; __shared__ float b[4];\n"
           "    static __shared__ float c[8];\n"
           "#define TILE(n) __shared__ float n[4]\n")
    # (a declaration at a line's start gets its guard at the end of the line before, which
    # ends a statement: the declaration's own columns stay as written; `static` is blanked,
    # as shim.h's __shared__ is static already)
    assert guard_static_shared(src) == (
        "{ PAL_SGUARD __shared__ float a[4]; PAL_SGUARD __shared__ float b[4]; PAL_SGUARD\n"
        "           __shared__ float c[8];\n"
        "#define TILE(n) __shared__ float n[4]\n")


def test_clangs_column_is_read_only_at_a_names_start_and_only_before_a_subscript():
    # mutants: _subscript_from took a column inside a name (`acc` of `xacc[j]`), or gave a
    # name with no subscript after it
    from pagedattn_lab.cpu.report_checks import _subscript_from
    text = "    xacc[j] = 1;"
    assert _subscript_from(text, 4, text, 1) == "xacc[j]"
    assert _subscript_from(text, 5, text, 1) is None
    assert _subscript_from("    p = 1;", 4, "    p = 1;", 1) is None


def test_a_uint64_run_of_int64_max_then_past_it_names_the_one_past():
    # mutant: hash_block's uint64 scan took ids >= INT64_MAX: 2**63 - 1 came first, passed,
    # and 2**63 after it was hashed wrapped to -2**63
    from pagedattn_lab.engine.prefix_cache import hash_block
    with pytest.raises(ValueError, match=r"^token_ids\[1\]: expected a token id that fits"):
        hash_block(None, np.array([2**63 - 1, 2**63], np.uint64))


def test_the_scheduler_refuses_a_token_past_int64_when_it_is_added():
    # mutant: Scheduler.add took ids as int(t): the request was queued, and the prefix
    # cache's hash raised at a later schedule()
    from pagedattn_lab.engine import EngineConfig
    from pagedattn_lab.engine.kv_manager import KVCacheManager
    from pagedattn_lab.engine.request import Request, SamplingParams
    from pagedattn_lab.engine.scheduler import Scheduler
    sched = Scheduler(EngineConfig(num_pages=4, page_size=2), KVCacheManager(4, 2))
    with pytest.raises(ValueError, match=r"^req\.prompt_ids\[1\]: expected a token id that "
                                         r"fits int64"):
        sched.add(Request(7, [1, 2**63], SamplingParams()))
