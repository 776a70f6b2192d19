"""Hunt 72: wrong answers in workbooks 09-13 that got a hint naming another mistake.

Each wrong kernel is the solution notebook's with one classic mistake edited in; each case
asserts the check fails it with a hint naming that mistake (and, where the evidence cannot
tell two mistakes apart, both of them).
"""
import numpy as np
import pytest

from tests.check_helpers import assert_caught, mutate, solution_source
from tests.test_check_mistakes_engine import step_model

TC = ("09_tensor_core_decode.ipynb", "SOURCE_TILE")
_MMA = "        wmma::mma_sync(s, a, b, s);\n    }\n"
_OUT = "scores + ((long long)kv_head * gridDim.x + tile) * 256"
_FILL = "    wmma::fill_fragment(s, 0.0f);\n"
_LOOP = "    for (int k0 = 0; k0 < head_dim; k0 += 16) {\n"

TC_MISTAKES = [
    # before: "the k0 loop ... yours stops 16 short", about a loop whose bounds are right
    ("store inside the loop, before its mma_sync",
     [(_MMA, f"        wmma::store_matrix_sync({_OUT}, s, 16, wmma::mem_row_major);\n" + _MMA),
      ("    wmma::store_matrix_sync(out, s, 16, wmma::mem_row_major);\n", "")],
     "a store before the last mma_sync", ()),
    ("k0 loop 16 short (either mistake is named)",
     [("k0 < head_dim; k0 += 16", "k0 < head_dim - 16; k0 += 16")], "stops 16 short", ()),
    # before: the catch-all "S[r][c] = q[kv_head * group + r] . k(...)"
    ("accumulator zeroed inside the k0 loop",
     [(_FILL, ""), (_LOOP, _LOOP + "    " + _FILL)], "zeroed inside the loop",
     ("stops 16 short",)),
    # before: the catch-all; on the CPU executor a fragment never filled holds the previous
    # block's accumulator (each tile's scores the running sum of the tiles so far), or, where
    # the compiler fills variables never set (GCC 12+), -1.7e38 everywhere
    ("accumulator never zeroed", [(_FILL, "")], "a fragment starts with whatever its registers "
     "held", ("zeroed inside the loop",)),
]


@pytest.mark.parametrize("name, edits, phrase, not_phrases", TC_MISTAKES,
                         ids=[m[0] for m in TC_MISTAKES])
def test_tc_tile_scores_hint_names_the_mistake(name, edits, phrase, not_phrases):
    assert_caught("tc_tile_scores", mutate(solution_source(*TC), edits), phrase,
                  not_phrases=not_phrases)


# -- lesson 12: schedule_step --------------------------------------------------------------

STEP_MISTAKES = [
    # before: "a prompt that fits exactly ... was refused", the one named mistake, on a step
    # whose `<=` is right and whose running requests were charged ceil(n / page_size) pages
    ("running request charged its chunk's pages", step_model(running_price="chunk"),
     "a running request was charged ceil(n / page_size) pages"),
    # before: the same hint, for a prompt priced n // page_size + 1 pages
    ("prompt priced n // page_size + 1", step_model(waiting_price="plus_one"),
     "n // page_size + 1 is one page too many"),
]


@pytest.mark.parametrize("name, impl, phrase", STEP_MISTAKES, ids=[m[0] for m in STEP_MISTAKES])
def test_schedule_step_hint_names_the_mistake(name, impl, phrase):
    assert_caught("schedule_step", impl, phrase)


# -- lesson 13: wire_bytes -----------------------------------------------------------------

def _wire(values=None, table_entry=4):
    def fn(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world_size, itemsize):
        size = values or itemsize
        batch = len(seq_lens)
        pages = -(-int(max(seq_lens)) // page_size)
        tables = (table_entry or itemsize) * (2 + batch + batch * pages)
        output_share = batch * (num_heads // world_size) * head_dim * size
        kv_read = int(np.sum(seq_lens)) * 2 * (num_kv_heads // world_size) * head_dim * size
        return tables, output_share, kv_read
    return fn


WIRE_MISTAKES = [
    # before: "output_share is what the rank sends, once: not sent plus received (2 * share)"
    ("every value 4 bytes (fp32)", _wire(values=4), "not 4 (fp32) always", ("2 * share",)),
    # before: the catch-all restating the three formulas
    ("table entries of itemsize bytes", _wire(table_entry=None),
     "int32: 4 bytes, whatever itemsize is", ()),
    # before: "whatever itemsize is", though 8-byte entries are no itemsize of the cases
    ("table entries of 8 bytes", _wire(table_entry=8), "not 8 (int64)", ()),
]


@pytest.mark.parametrize("name, impl, phrase, not_phrases", WIRE_MISTAKES,
                         ids=[m[0] for m in WIRE_MISTAKES])
def test_wire_bytes_hint_names_the_mistake(name, impl, phrase, not_phrases):
    assert_caught("wire_bytes", impl, phrase, not_phrases=not_phrases)


# -- lesson 11: quantize_write -------------------------------------------------------------

QUANT = ("11_kv_compression.ipynb", "SOURCE_WRITE")


def test_quantize_write_clamp_to_128_is_named():
    # before: the catch-all "code = rintf(x / scale) clamped to [-127, 127], at k_cache[...]"
    # for codes of 127 that came out -128 (the CPU executor's int8 conversion wraps)
    source = mutate(solution_source(*QUANT), [("127.0f), 127.0f)", "127.0f), 128.0f)")])
    assert_caught("quantize_write", source, "128 does not fit a signed char",
                  not_phrases=("-128 is never used",))


def test_quantize_write_slot_zero_skipped_is_named():
    # before: the catch-all "scale = max |x| ... written by one lane at k_scale[...]" for a
    # kernel whose only fault is `slot <= 0`: slot 0's scales and codes never written
    source = mutate(solution_source(*QUANT), [("if (slot < 0) return;",
                                               "if (slot <= 0) return;")])
    assert_caught("quantize_write", source, "slot 0 (page 0, offset 0) was never written")


# -- lesson 09: mask_tile ------------------------------------------------------------------

def _mask_by_product(s, tile, seq_len, scale):
    past = 16 * tile + np.arange(16) >= seq_len
    return s * np.float32(scale) * np.where(past, np.float32(-np.inf), np.float32(1))


def _mask_blended(s, tile, seq_len, scale):
    m = (16 * tile + np.arange(16) < seq_len).astype(np.float32)
    return s * np.float32(scale) * m + (1 - m) * np.float32(-np.inf)


@pytest.mark.parametrize("impl, phrase", [
    # before (both): the catch-all "logit[r][c] = s[r][c] * scale, or -inf where ..."
    (_mask_by_product, "multiplying by an -inf mask gives +inf for a negative score"),
    (_mask_blended, "0 * -inf is NaN"),
], ids=["times an -inf mask", "m * x + (1 - m) * -inf"])
def test_mask_tile_inf_arithmetic_is_named(impl, phrase):
    assert_caught("mask_tile", impl, phrase)


def test_quantize_write_static_scale_written_is_named():
    # before: the codes' catch-all "code = rintf(x / scale) clamped ..." for a kernel that
    # stores a scale into the given static k_scale (the later blocks then read it)
    source = mutate(solution_source(*QUANT), [
        ("    signed char* dst", "    if (!per_token && lane == 0) k_scale[head] = 2.0f * scale;\n"
                                 "    signed char* dst")])
    assert_caught("quantize_write", source, "per_token = 0, yet k_scale[0] changed")


# -- lesson 11: dequant_decode -------------------------------------------------------------

READ = ("11_kv_compression.ipynb", "SOURCE_READ")
K_VALUE, V_VALUE = "((float)k_cache[row + d] * ks)", "((float)v_cache[row + d] * vs)"


@pytest.mark.parametrize("edits, phrase", [
    # before (all three): the catch-all "K element d of a token is k_cache[row + d] * its
    # scale, V likewise with v_scale ..."
    ([(K_VALUE, "((float)k_cache[row + d] * ks / 127.0f)"),
      (V_VALUE, "((float)v_cache[row + d] * vs / 127.0f)")],
     "dividing the K and V values by 127 again"),
    ([(V_VALUE, "((float)v_cache[row + d] * vs / 127.0f)")], "dividing the V values by 127"),
    ([(K_VALUE, "((float)k_cache[row + d] * ks * 127.0f)")], "not code * scale * 127"),
], ids=["K and V / 127", "V / 127", "K * 127"])
def test_dequant_decode_qmax_again_is_named(edits, phrase):
    assert_caught("dequant_decode", mutate(solution_source(*READ), edits), phrase)
