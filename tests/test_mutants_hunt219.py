"""Hunt 219: wrong answers to workbooks 01, 05, 08 and 11 that their checks passed or
mis-named.

1. refcounts: no case forked an empty table, so a fork that raised for [] (a range test by
   min() and max(), or an explicit refusal) or returned None passed, though a sequence with
   no tokens yet has an empty block table.
2. kv_scales and quantize_write: the smallest rows had amax 1e-5, so a threshold on amax at
   the usual epsilons (1e-6, FLT_EPSILON) passed though the prompts say "no threshold, no
   floor"; the rows now reach 6e-8, float16's smallest value above 0 (a floor below it, as
   vLLM's 1e-8, still passes), and a floor is named as a floor, not as a scale of 1. A
   loop over d to d <= head_dim, stopped reading past k, was told only to check the index.
3. decode_floor_ms: every time was a large fraction of a millisecond, so rounding to 4 to 6
   decimals passed; a 64 KiB read (2e-5 ms) shows it.
4. tiled_launch: a grid or block of 0 or 4 entries, or a negative count, was told that
   np.ceil gives floats.
5. dequant_decode: only V's (or only K's) per-token scale read at [slot] or at the token's
   position got the spec's general hint; it is named as the static index already was.
"""
import numpy as np
import pytest

from tests.check_helpers import GoodAllocator, assert_caught, mutate, run_check, \
    solution_source

QUANT = "11_kv_compression.ipynb"


def _passes(task, impl, **kwargs):
    result, printed = run_check(task, impl, **kwargs)
    assert result.passed, printed


# -- 1. refcounts: fork([]) ---------------------------------------------------------------------

class MinMaxRangeFork(GoodAllocator):
    def fork(self, pages):
        pages = list(pages)
        if min(pages) < 0 or max(pages) >= self.num_pages:
            raise ValueError("a page is outside the pool")
        return super().fork(pages)


class RefusesEmptyFork(GoodAllocator):
    def fork(self, pages):
        if not pages:
            raise ValueError("nothing to fork")
        return super().fork(pages)


class NoneForEmptyFork(GoodAllocator):
    def fork(self, pages):
        return super().fork(pages) if pages else None


class FreeListFork(GoodAllocator):
    """Right: a page is in use when it is not on the free list."""

    def fork(self, pages):
        pages = list(pages)
        if any(not 0 <= p < self.num_pages or p in self.free_list for p in pages):
            raise ValueError("only pages in use can be shared")
        for p in pages:
            self.refs[p] += 1
        return pages[:]


@pytest.mark.parametrize("cls, phrase, not_phrases", [
    (MinMaxRangeFork, "min() and max() of an empty list raise", ()),
    (RefusesEmptyFork, "fork([]) is a valid call", ("min() and max()",)),
    (NoneForEmptyFork, "fork([]) is a valid call", ("min() and max()",)),
], ids=["min-max range test", "refuses []", "None for []"])
def test_a_fork_that_fails_an_empty_table_is_named(cls, phrase, not_phrases):
    assert_caught("refcounts", cls, phrase, not_phrases=not_phrases)


@pytest.mark.parametrize("cls", [GoodAllocator, FreeListFork], ids=["counts", "free list"])
def test_right_forks_pass(cls):
    _passes("refcounts", cls)


# -- 2. small rows: no threshold, no floor --------------------------------------------------

def _scales(threshold=0.0, floor=None):
    def kv_scales(x, qmax):
        amax = np.abs(x).max(axis=-1)
        if floor is not None:
            return (np.maximum(amax, floor) / qmax).astype(np.float32)
        return np.where(amax > threshold, amax / np.float32(qmax), 1.0).astype(np.float32)
    return kv_scales


@pytest.mark.parametrize("threshold", [1e-6, 1.1920929e-7])
def test_kv_scales_names_a_threshold_at_the_usual_epsilons(threshold):
    assert_caught("kv_scales", _scales(threshold=threshold), "a threshold on amax",
                  not_phrases=("stop at",))


def test_kv_scales_names_a_floor_as_a_floor():
    assert_caught("kv_scales", _scales(floor=1e-6), "scales stop at",
                  not_phrases=("gets scale 1",))


def test_kv_scales_passes_a_floor_below_float16s_smallest_value():
    _passes("kv_scales", _scales(floor=1e-8))


SCALE_LINE = "scale = amax > 0.0f ? amax / 127.0f : 1.0f;"


@pytest.mark.parametrize("scale_line, phrase, not_phrase", [
    ("scale = amax > 1e-6f ? amax / 127.0f : 1.0f;", "a threshold on amax", "stop at"),
    ("scale = amax > 1.1920929e-7f ? amax / 127.0f : 1.0f;", "a threshold on amax",
     "stop at"),
    ("scale = fmaxf(amax, 1e-6f) / 127.0f;", "scales stop at", "gets scale 1"),
], ids=["threshold 1e-6", "threshold FLT_EPSILON", "floor 1e-6"])
def test_quantize_write_names_a_threshold_or_a_floor_on_small_rows(scale_line, phrase,
                                                                  not_phrase):
    source = mutate(solution_source(QUANT, "SOURCE_WRITE"), [(SCALE_LINE, scale_line)])
    assert_caught("quantize_write", source, phrase, not_phrases=(not_phrase,), device="cpu")


@pytest.mark.parametrize("scale_line", [
    "scale = fmaxf(amax, 1e-8f) / 127.0f;",
    "scale = amax > 0.0f ? fmaxf(amax / 127.0f, 1.17549435e-38f) : 1.0f;",
], ids=["vLLM's floor", "smallest normal"])
def test_quantize_write_passes_a_floor_below_float16s_smallest_value(scale_line):
    source = mutate(solution_source(QUANT, "SOURCE_WRITE"), [(SCALE_LINE, scale_line)])
    _passes("quantize_write", source, device="cpu")


LOOP_BOUND = "for (int d = lane; d < head_dim; d += 32)"


def test_quantize_write_names_a_loop_over_d_that_reads_past_the_row():
    source = solution_source(QUANT, "SOURCE_WRITE").replace(
        LOOP_BOUND, "for (int d = lane; d <= head_dim; d += 32)")
    assert_caught("quantize_write", source, "d <= head_dim reads one element past the row",
                  device="cpu")


# -- 3. decode_floor_ms: a time of 2e-5 ms ----------------------------------------------------

@pytest.mark.parametrize("digits", [4, 6])
def test_decode_floor_ms_fails_a_time_rounded_to_fixed_decimals(digits):
    assert_caught("decode_floor_ms", lambda n, bw: round(n / (bw * 1e9) * 1e3, digits),
                  "return the time unrounded")


@pytest.mark.parametrize("fn", [lambda n, bw: n / bw / 1e6,
                                lambda n, bw: float(np.float32(n) / np.float32(bw * 1e6))],
                         ids=["divided twice", "float32"])
def test_decode_floor_ms_passes_other_right_forms(fn):
    _passes("decode_floor_ms", fn)


# -- 4. tiled_launch: a grid or block dim3 refuses ---------------------------------------------

def _launch(grid_of, block_of=lambda t: (t,)):
    def tiled_launch(batch, num_heads, max_len, tile_q, page_size, head_dim):
        return grid_of(batch, num_heads, max_len, tile_q), block_of(tile_q), \
            2 * page_size * head_dim * 4
    return tiled_launch


@pytest.mark.parametrize("impl, phrase", [
    (_launch(lambda b, h, n, t: (-(-n // t), h, b, 1)), "the grid has 4 entries"),
    (_launch(lambda b, h, n, t: (-(-n // t), h, b), lambda t: ()), "the block has 0 entries"),
    (_launch(lambda b, h, n, t: (n // -t, h, b)), "none is negative"),
], ids=["4-d grid", "empty block", "negative tiles"])
def test_tiled_launch_names_what_makes_a_launch_shape_invalid(impl, phrase):
    assert_caught("tiled_launch", impl, phrase, not_phrases=("np.ceil",))


def test_tiled_launch_still_names_np_ceil():
    assert_caught("tiled_launch", _launch(lambda b, h, n, t: (np.ceil(n / t), h, b)),
                  "np.ceil gives floats")


# -- 5. dequant_decode: one half's per-token scale read at another index ----------------------

SCALES_LINE = "float ks = k_scale[at], vs = v_scale[at];"


@pytest.mark.parametrize("scales_line, phrase", [
    ("float ks = k_scale[at], vs = v_scale[per_token ? slot : kv_head];",
     "not v_scale[slot] (k's index is right)"),
    ("float ks = k_scale[per_token ? slot : kv_head], vs = v_scale[at];",
     "not k_scale[slot] (v's index is right)"),
    ("float ks = k_scale[per_token ? (long long)t * num_kv_heads + kv_head : kv_head], "
     "vs = v_scale[at];", "not k_scale[t * num_kv_heads + kv_head]"),
], ids=["V at slot", "K at slot", "K at position"])
def test_one_per_token_scale_at_another_index_is_named(scales_line, phrase):
    source = mutate(solution_source(QUANT, "SOURCE_READ"), [(SCALES_LINE, scales_line)])
    assert_caught("dequant_decode", source, phrase, device="cpu")
