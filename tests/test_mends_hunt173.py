"""Hunt 173: a reader's findings on plans and checks, mended."""
from __future__ import annotations

import numpy as np
import pytest

from pagedattn_lab import BatchDecodeWrapper
from pagedattn_lab.validate import INT32_MAX

WIDE_ROW = np.zeros((1, 4096), np.int32)
PAGE = 2**19
SIMT_MOST = 2**31 - 2048   # decode.cu counts 2048 tokens past the last in int32 (TOKEN_MARGIN)


def plan_codes(length, w=None, kernel="tensor_core", **kw):
    return (w or BatchDecodeWrapper()).plan(WIDE_ROW, np.array([length], np.int32), 8, 1, 64,
                                            PAGE, "float16", kernel=kernel, kv_dtype="fp8_e4m3",
                                            **kw)


# ---- 1. past the tensor-core merge, simt is offered only where it takes the length ------------
@pytest.mark.parametrize("length", [INT32_MAX, INT32_MAX - 1, INT32_MAX - 99, SIMT_MOST + 1])
def test_wmma_refusal_offers_no_simt_past_simts_own_bound(length):
    """2^31 - 1 tokens were told "plan with kernel='simt'", which refuses them too."""
    with pytest.raises(ValueError, match=r"seq_lens\[0\]: \d+ tokens in partitions of \d+: the "
                                         r"simt kernel counts"):
        plan_codes(length, kernel="simt")
    with pytest.raises(ValueError) as info:
        plan_codes(length)
    assert str(info.value).endswith(f"so it counts at most 2145887005 tokens: no kernel counts "
                                    f"that many tokens (the simt kernel at most {SIMT_MOST})")
    assert "kernel='simt'" not in str(info.value)


def test_wmma_refusal_offers_simt_up_to_its_bound():
    with pytest.raises(ValueError, match=r"plan with kernel='simt' for longer sequences$"):
        plan_codes(SIMT_MOST)
    assert plan_codes(SIMT_MOST, kernel="simt").kernel == "simt"   # what the message offers


# ---- 2. wire_bytes: the head count divided by world_size twice --------------------------------
def _wire_bytes(twice_q=False, twice_kv=False, product=False):
    def wire_bytes(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world_size, itemsize):
        lens, r = [int(x) for x in seq_lens], world_size
        tables = 4 * (2 + len(lens) + len(lens) * -(-max(lens) // page_size))
        q = num_heads // r // r if twice_q else num_heads // r
        kv = num_kv_heads // r // r if twice_kv else num_kv_heads // r
        share = len(lens) * q * head_dim * itemsize
        return tables, share // r if product else share, sum(lens) * 2 * kv * head_dim * itemsize
    return wire_bytes


TWICE_OUT = "output_share was divided by world_size twice"
TWICE_KV = "kv_read was divided by world_size twice"
# (12 heads / 3 ranks / 3 is 1, not 4/3: it was told "itemsize bytes per value too"; 6 KV heads
# / 3 / 3 is 0: told the generic formulas)
BYTES_CASES = [((48, 13, 33), 12, 6, 64, 16, 3, 4), ((17,), 32, 8, 128, 16, 4, 2),
               ((50, 7, 24), 12, 4, 64, 12, 2, 2)]


@pytest.mark.parametrize("case", BYTES_CASES)
@pytest.mark.parametrize("how, named", [
    ({"twice_q": True}, TWICE_OUT), ({"product": True}, TWICE_OUT),
    ({"twice_kv": True}, TWICE_KV)])
def test_dividing_the_heads_twice_is_named(case, how, named):
    from pagedattn_lab.grading import checks_tp   # noqa: PLC0415
    from pagedattn_lab.grading.report import Mismatch   # noqa: PLC0415
    with pytest.raises(Mismatch) as info:
        checks_tp._bytes_case(_wire_bytes(**how), *case)
    assert named in info.value.hint, info.value.hint
    assert info.value.hint.count(named) == 1   # (both ways alike: one hint, once)


# ---- 3. one NaN mask for the codes' hint and the scales' ---------------------------------------
def test_nan_at_maps_live_slots_nan_inputs_to_the_cache():
    from pagedattn_lab.grading.quant_variants import nan_at   # noqa: PLC0415
    k = np.zeros((3, 2, 5))
    k[0, 1, 4] = k[2, 0, 0] = np.nan
    k[1, 0, 2] = np.nan   # the padding row's: never in the cache
    slots = np.array([3, -1, 0])
    codes = nan_at(k, slots, (2, 2, 2, 5))          # 2 pages of 2 slots
    assert np.argwhere(codes).tolist() == [[0, 0, 0, 0], [1, 1, 1, 4]]
    rows = nan_at(k, slots, (2, 2, 2), rows=True)   # one scale per (slot, head)
    assert np.argwhere(rows).tolist() == [[0, 0, 0], [1, 1, 1]]


# ---- 4. a not_phrase that can fail ------------------------------------------------------------
def test_hunt163s_not_phrase_is_a_hint_the_package_gives():
    """"adds exp(s - m) times" was in no hint: the assertion it made could not fail."""
    from pathlib import Path   # noqa: PLC0415

    from pagedattn_lab.grading import checks_dequant   # noqa: PLC0415
    assert "adds its weight e^(s - m_new)" in Path(checks_dequant.__file__).read_text()
