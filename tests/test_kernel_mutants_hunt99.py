"""Inputs that kill mutants of the package's kernels which no other CPU-run test killed
(hunt 99: one small mutation at a time in pagedattn_lab/kernels, the CPU tests of that kernel
run against it). Each test names the mutant it kills; all run on the CPU executor against
the float64 reference, in shapes whose compiles other tests already make where one would do.

Surviving mutants with no test here are equivalent: no valid input tells them apart, e.g.
prefill_mma.cu's `m_use = m_new` without the guard for a row with no key yet (only padding
rows, which are never stored, have no key in the first tile)."""
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import decode_plan as dp
from pagedattn_lab import quant
from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper
from pagedattn_lab.reference import reference_prefill_packed
from tests.decode_cases import check_close, decode_problem, poisoned, reference
from tests.test_prefill_quant import CASES as PREFILL_QUANT_CASES
from tests.test_prefill_wrapper import packed_problem, rel_err


def small_binade_codes(rng, shape):
    """e4m3 codes of the three lowest binades, either sign: exponent field 0 (subnormals:
    m 2^-9), 1 and 2, so a third of them are subnormal and all are of like size."""
    magnitude = rng.integers(0, 0x18, shape, dtype=np.uint8)
    return magnitude | (rng.integers(0, 2, shape, dtype=np.uint8) << 7)


def test_fp8_pages_of_subnormal_codes_prefill(rng):
    """kv_quant.cuh e4m3_to_float's subnormals (code m * 2^-9): random K/V scaled into fp8's
    normal range almost never give a subnormal code, so a wrong subnormal step (2^-8) survived
    the other CPU tests. Here a third of the codes are subnormal; the reference decodes them with
    ml_dtypes (quant.dequantize)."""
    lens, q_lens, page_size, num_heads, num_kv_heads, head_dim = PREFILL_QUANT_CASES[1]
    q, k, _, indptr, tables, seq_lens = packed_problem(rng, lens, q_lens, page_size,
                                                       num_heads, num_kv_heads, head_dim,
                                                       np.float32)
    owned = ~np.isnan(k[..., 0, 0])
    scales = np.array([3.0, 0.5], np.float32)[:num_kv_heads] * 64   # codes' values x scale ~ 1
    caches = []
    for _ in range(2):
        codes = small_binade_codes(rng, k.shape)
        codes[~owned] = 0x7f                          # NaN in the slots no sequence owns
        caches.append((codes, quant.dequantize(codes, "fp8_e4m3", scales).astype(np.float64)))
    (kc, kd), (vc, vd) = caches
    assert (kc[owned] & 0x78 == 0).mean() > 0.25      # many subnormal codes really are read
    q16 = q.astype(np.float16)
    w = BatchPrefillWrapper().plan(indptr, tables, seq_lens, num_heads, num_kv_heads, head_dim,
                                   page_size, np.float16, kv_dtype="fp8_e4m3",
                                   scale_scheme="static")
    got = w.run(q16, kc, vc, k_scale=scales, v_scale=scales.copy()).astype(np.float64)
    assert np.isfinite(got).all(), "an output was not written, or a NaN slot leaked in"
    ref = reference_prefill_packed(q16, kd, vd, indptr, tables, seq_lens)
    assert rel_err(got, ref) < 2e-3, f"vs the float64 reference: {rel_err(got, ref):.2e}"


@pytest.mark.parametrize("impl", ["mma", "rows"])
def test_tensor_core_merge_of_more_than_16_partitions(rng, monkeypatch, impl):
    """decode_tc_merge.cuh merge_parts: one lane per partition, the maximum over them by a
    butterfly over 32 lanes. The other CPU tests split a sequence into at most 9 parts, so a
    butterfly over 16 lanes (lanes 16+ never seeing lanes 0-15's maximum) survived them."""
    monkeypatch.setattr(dp, "TC_IMPL", impl)
    args = decode_problem(rng, [1500, 3], page_size=16, num_heads=8, num_kv_heads=2,
                          head_dim=64, dtype="float16")
    # keys of pages scaled 0.5x .. 3x: the partitions' maxima differ by whole units
    args[1][...] *= np.linspace(0.5, 3, args[1].shape[0])[:, None, None, None].astype(np.float16)
    out = pl.paged_attention_decode(*args, out=poisoned(args[0].shape, "float16"),
                                    kernel="tensor_core", num_splits=24)
    check_close(out, reference(args), "float16")
