"""`paged_attention_decode` on the GPU keeps its last plans (attention_decode.py): a call
with the same table VALUES reuses one, anything else plans (and checks) afresh. Marked `gpu`."""
import numpy as np
import pytest

from pagedattn_lab import attention_decode
from pagedattn_lab.attention_decode import paged_attention_decode

from .decode_cases import check_close, decode_problem, reference

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


@pytest.mark.parametrize("heads,kv", [(8, 8), (8, 2)])   # the simt and tensor-core plans
def test_plans_are_reused_only_for_the_same_values(rng, cp, heads, kv):
    args = decode_problem(rng, [40, 17, 33], num_heads=heads, num_kv_heads=kv, spare_pages=4)
    q, k, v, tables, lens = args
    dev = [cp.asarray(a) for a in args]
    attention_decode._plans.clear()
    first = paged_attention_decode(*dev, num_splits=2)
    planned = [entry[2] for entry in attention_decode._plans.values()]
    second = paged_attention_decode(*dev, num_splits=2)
    assert first is not second   # out=None: a new array per call
    assert [entry[2] for entry in attention_decode._plans.values()] == planned   # reused
    for out in (first, second):
        check_close(cp.asnumpy(out), reference(args), "float16")
    # the caller's tables changed in place: a spare page with other values replaces one
    spare = np.setdiff1d(np.arange(k.shape[0]), tables[tables >= 0])[0]
    k2, v2 = k.copy(), v.copy()
    k2[spare], v2[spare] = rng.standard_normal(k.shape[1:]), rng.standard_normal(k.shape[1:])
    tables2 = tables.copy()
    tables2[0, 1] = spare
    dev[1][...], dev[2][...] = cp.asarray(k2), cp.asarray(v2)
    dev[3][...] = cp.asarray(tables2)
    out = paged_attention_decode(*dev, num_splits=2)
    check_close(cp.asnumpy(out), reference((q, k2, v2, tables2, lens)), "float16")
    # ... and a page id past the cache is refused, as on a first call
    dev[3][0, 1] = k.shape[0]
    with pytest.raises(ValueError, match=r"block_tables\[0, 1\]"):
        paged_attention_decode(*dev, num_splits=2)
    # a cached plan still checks the arrays it is given
    with pytest.raises(ValueError, match="k_cache"):
        dev[3][0, 1] = spare
        paged_attention_decode(dev[0], cp.asfortranarray(dev[1]), *dev[2:], num_splits=2)


def test_tables_reach_the_host_after_the_work_queued_before_them(cp):
    """to_numpy_together copies asynchronously and waits once: what a kernel queued before the
    copy wrote is what comes back, for every array, in its shape and dtype."""
    from pagedattn_lab.backend import to_numpy_together
    tables = cp.zeros((64, 300), cp.int32)
    lens = cp.zeros(64, cp.int32)
    for step in range(3):   # each step's writes are queued right before the copies
        tables += cp.arange(64 * 300, dtype=cp.int32).reshape(64, 300) + step
        lens[...] = cp.arange(64, dtype=cp.int32) * (step + 2)
        t_h, l_h = to_numpy_together(tables, lens)
        np.testing.assert_array_equal(t_h, cp.asnumpy(tables))
        np.testing.assert_array_equal(l_h, np.arange(64, dtype=np.int32) * (step + 2))
        assert t_h.dtype == np.int32 and t_h.shape == (64, 300) and l_h.shape == (64,)
    sliced, = to_numpy_together(tables[:, ::3])   # a strided view comes back in its shape
    np.testing.assert_array_equal(sliced, cp.asnumpy(tables)[:, ::3])
