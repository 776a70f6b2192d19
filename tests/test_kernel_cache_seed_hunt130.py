"""The `own_kernel_cache` fixture (conftest.py) of the tests that attack the CPU executor: a
cache of the test's own, as empty as before for its kernels, but with the runtime's objects
and the precompiled shim copied in, so that its first compile does not build them again
(~5-10 s per test on CI, hunt 130)."""
import numpy as np

from pagedattn_lab.cpu import RawKernel, compiler, count_accesses, pch

KERNEL = 'extern "C" __global__ void k(float *x) { x[threadIdx.x] = 3.0f; }\n'


def test_a_compile_in_its_own_cache_builds_no_runtime_and_no_shim(own_kernel_cache,
                                                                   monkeypatch):
    built = []
    real_runtime, real_pch = compiler._build_runtime, pch._build
    monkeypatch.setattr(compiler, "_build_runtime",
                        lambda *a: built.append("runtime") or real_runtime(*a))
    monkeypatch.setattr(pch, "_build", lambda *a: built.append("pch") or real_pch(*a))
    assert not list(own_kernel_cache.rglob("k-*"))   # no kernel of any other test
    kernel, x = RawKernel(KERNEL, "k"), np.zeros(4, np.float32)
    kernel((1,), (4,), (x,))
    assert kernel.cached is False and (x == 3).all()   # built here, not served
    count_accesses(kernel, (1,), (4,), (x,))
    assert kernel.cached is False and built == []


def test_what_a_test_writes_in_its_cache_reaches_no_other(own_kernel_cache, _seed_cache):
    mine = sorted(p for p in own_kernel_cache.rglob("*") if p.is_file())
    assert mine, "the seed was not copied"
    for p in mine:
        assert p.stat().st_nlink == 1   # copies, never links to the seed's files
        p.write_bytes(b"written by a kernel")
    assert all(p.read_bytes() != b"written by a kernel"
               for p in _seed_cache.rglob("*") if p.is_file())
