"""The prefill kernels on the GPU (CuPy), against the float64 reference; a decode cache of
more than 2^31 elements; the manager on the GPU. (Decode's grid: test_decode_gpu.py.)

Marked `gpu`: skipped without one (tests/conftest.py).
"""
import numpy as np
import pytest

from pagedattn_lab import reference_decode, reference_prefill

from .test_attention import TOL, make_problem, rel_err

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


def run_prefill(cp, args, dtype, kernel):
    from pagedattn_lab.attention import paged_attention_prefill
    ref = reference_prefill(*args)
    dev = [cp.asarray(a) for a in args]
    out = cp.full(ref.shape, np.nan, dtype=dtype)
    host = cp.asnumpy(paged_attention_prefill(*dev, kernel=kernel, out=out))
    assert np.isfinite(host).all(), "some outputs were not written"
    for b, n in enumerate(args[4]):
        assert not host[b, n:].any()
    err = rel_err(host, ref)
    assert err < TOL[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("kernel", ["naive", "tiled"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill(rng, cp, kernel, dtype, head_dim):
    lens = [300, 1, 63, 64, 65, 129]
    args = make_problem(rng, lens, page_size=16, num_heads=4, num_kv_heads=2,
                        head_dim=head_dim, dtype=dtype, mode="prefill", max_len=301)
    run_prefill(cp, args, dtype, kernel)


@pytest.mark.parametrize("page_size", [8, 32, 64, 256])
def test_prefill_tiled_page_sizes(rng, cp, page_size):
    args = make_problem(rng, [200, 37], page_size=page_size, num_heads=8, num_kv_heads=1,
                        mode="prefill")
    run_prefill(cp, args, np.float32, "tiled")


@pytest.mark.parametrize("kernel", ["simt", "tensor_core"])
def test_decode_cache_over_2_to_31_elements(rng, cp, kernel):
    """Pages past element 2^31: offsets must be computed in 64 bits."""
    from pagedattn_lab.attention import paged_attention_decode
    page_size, kvh, hd = 16, 8, 128
    per_page = page_size * kvh * hd
    num_pages = (1 << 31) // per_page + 64            # about 4.3 GB per fp16 cache
    k = cp.empty((num_pages, page_size, kvh, hd), dtype=cp.float16)
    v = cp.empty_like(k)
    lens = [100, 40]
    small = make_problem(rng, lens, page_size=page_size, num_heads=16, num_kv_heads=kvh,
                         head_dim=hd, dtype=np.float16, spare_pages=0)
    q, k_small, v_small, tables_small, seq_lens = small
    used = tables_small[tables_small >= 0]
    high = num_pages - 1 - np.arange(used.size)         # the last pages of the big cache
    tables = tables_small.copy()
    tables[tables_small >= 0] = high
    k[cp.asarray(high)] = cp.asarray(k_small[used])
    v[cp.asarray(high)] = cp.asarray(v_small[used])
    ref = reference_decode(q, k_small, v_small, tables_small, seq_lens)
    out = paged_attention_decode(cp.asarray(q), k, v, cp.asarray(tables), cp.asarray(seq_lens),
                                 kernel=kernel, num_splits=2)
    assert rel_err(cp.asnumpy(out), ref) < 2e-3
    del k, v
    cp.get_default_memory_pool().free_all_blocks()


def test_manager_on_gpu(rng, cp):
    from pagedattn_lab.manager import PagedAttentionManager
    mgr = PagedAttentionManager(64, 16, 8, 2, 64, device="gpu")
    k, v, q = (rng.standard_normal((40, h, 64)).astype(np.float32) for h in (2, 2, 8))
    seq, out = mgr.add_sequence(k, v, q)
    assert isinstance(out, cp.ndarray) and out.shape == (40, 8, 64)
    step = mgr.decode_step([seq], cp.asarray(q[:1]), cp.asarray(k[:1]), cp.asarray(v[:1]))
    assert isinstance(step, cp.ndarray) and mgr.seq_len(seq) == 41
    tables, lens = (cp.asnumpy(a) for a in mgr.cache.block_tables([seq]))
    ref = reference_decode(q[:1], cp.asnumpy(mgr.cache.k_cache), cp.asnumpy(mgr.cache.v_cache),
                           tables, lens)
    assert rel_err(cp.asnumpy(step), ref) < 1e-5


def test_numpy_inputs_still_run_on_cpu(rng):
    """On a GPU machine, NumPy arrays run on the CPU executor and come back as NumPy."""
    from pagedattn_lab.attention import paged_attention_decode
    args = make_problem(rng, [5, 20])
    out = paged_attention_decode(*args)
    assert isinstance(out, np.ndarray)
    assert rel_err(out, reference_decode(*args)) < 1e-5


def test_prefill_plans_reused_take_the_fast_path(rng, cp):
    """A plan's second launch skips the argument check and must give the same result."""
    from pagedattn_lab.attention_prefill import plan_prefill
    args = [cp.asarray(a) for a in make_problem(rng, [130, 64], mode="prefill")]
    launch = plan_prefill(*args, kernel="tiled")
    first = launch().copy()
    assert cp.array_equal(first, launch())
