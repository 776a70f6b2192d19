"""BatchDecodeWrapper.run on the GPU: the launches with their arguments packed once in plan
(rawkernel.PackedLaunch) give exactly what cupy.RawKernel's own launches give, over several
layers and scales; the common call of CuPy arrays takes the fast check; bad calls after a good
one are still refused naming the argument, before anything launches. Marked `gpu`."""
import numpy as np
import pytest

from pagedattn_lab.rawkernel import PackedLaunch
from pagedattn_lab.wrappers import BatchDecodeWrapper

from .decode_cases import check_close, decode_problem, reference
from .test_decode_quant import compressed_problem

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


class Refuse:
    """A launch that must not happen (as a _launches entry's kernel)."""

    def launch(self, *a):
        raise AssertionError("launched")

    __call__ = launch


def refuse_launches(w, monkeypatch):
    monkeypatch.setattr(w, "_launches", [(Refuse(), 1, 1, lambda *a: (), 0)])


def no_general_path(w, monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("the common call took the general path")
    monkeypatch.setattr(w, "_run_general", refuse)


def unpacked(w, q, k, v, out, scale_log2, k_scale=None, v_scale=None):
    """The plan's launches through cupy.RawKernel's own argument conversion."""
    ks = w._no_scale if k_scale is None else k_scale
    vs = w._no_scale if v_scale is None else v_scale
    if w.kv_format is not None:
        k, v = k.view(np.uint8), v.view(np.uint8)
    for kern, grid, block, make_args, shared in w._launches:
        kern(grid, block, make_args(q, k, v, out, np.float32(scale_log2), ks, vs),
             shared_mem=shared)
    return out


PLANS = {"simt, split in 3": dict(heads=4, kv=4, kernel="simt", splits=3),
         "tensor cores, split in 2": dict(heads=8, kv=2, kernel="tensor_core", splits=2)}


@pytest.mark.parametrize("case", sorted(PLANS))
def test_packed_launches_match_cupys_own(rng, cp, monkeypatch, case):
    c = PLANS[case]
    args = decode_problem(rng, [1, 17, 300], num_heads=c["heads"], num_kv_heads=c["kv"],
                          head_dim=128)
    dev = [cp.asarray(a) for a in args]
    w = BatchDecodeWrapper().plan(dev[3], dev[4], c["heads"], c["kv"], 128, 16, "float16",
                                  kernel=c["kernel"], num_splits=c["splits"])
    assert all(isinstance(entry[0], PackedLaunch) for entry in w._launches)
    no_general_path(w, monkeypatch)
    for layer in range(2):   # another layer: other q, k, v arrays, same plan
        if layer:
            args = (args[0][::-1].copy(), args[2], args[1], *args[3:])
            dev = [cp.asarray(a) for a in args]
        for scale in (None, 0.3, 0.3, 0.5):
            out = cp.full(dev[0].shape, np.nan, np.float16)
            assert w.run(*dev[:3], out=out, scale=scale) is out
            ref = cp.full(dev[0].shape, np.nan, np.float16)
            s = w._default_scale_log2 if scale is None else scale * 1.4426950408889634
            unpacked(w, *dev[:3], ref, s)
            np.testing.assert_array_equal(cp.asnumpy(out), cp.asnumpy(ref))
            check_close(cp.asnumpy(out), reference(args, scale), "float16")


@pytest.mark.parametrize("scheme", ["static", "per_token"])
def test_compressed_pages_packed_and_fast(rng, cp, monkeypatch, scheme):
    p = compressed_problem(rng, [40, 9, 300], "int8", scheme)
    d = {n: cp.asarray(p[n]) for n in ("q", "kc", "vc", "ks", "vs", "tables", "lens")}
    w = BatchDecodeWrapper().plan(d["tables"], d["lens"], 4, 2, 64, 16, "float16",
                                  kv_dtype="int8", scale_scheme=scheme)
    scales = dict(k_scale=d["ks"], v_scale=d["vs"])
    first = w.run(d["q"], d["kc"], d["vc"], **scales).copy()   # a static scale: read back once
    no_general_path(w, monkeypatch)
    again = w.run(d["q"], d["kc"], d["vc"], **scales)
    ref = unpacked(w, d["q"], d["kc"], d["vc"], cp.full(d["q"].shape, np.nan, np.float16),
                   w._default_scale_log2, d["ks"], d["vs"])
    for x in (again, ref):
        np.testing.assert_array_equal(cp.asnumpy(first), cp.asnumpy(x))


def test_bad_calls_after_a_good_one_are_refused_on_the_gpu(rng, cp, monkeypatch):
    args = decode_problem(rng, [40, 9], spare_pages=0)
    q, k, v, tables, lens = (cp.asarray(a) for a in args)
    w = BatchDecodeWrapper().plan(tables, lens, 4, 2, 64, 16, "float16")
    out = cp.full(q.shape, np.nan, np.float16)
    check_close(cp.asnumpy(w.run(q, k, v, out=out)), reference(args), "float16")
    out[...] = np.nan
    offset = cp.empty(q.size + 1, np.float16)[1:].reshape(q.shape)
    offset[...] = q
    bad = [(dict(k=k[:w.max_page], v=v[:w.max_page]), "k_cache: the plan reads page"),
           (dict(q=q.astype(np.float32)), "q: the plan is for float16"),
           (dict(q=offset), "q: expected data starting on a 16-byte boundary"),
           (dict(q=cp.asnumpy(q)), "q: the plan runs on the GPU"),
           (dict(out=k.reshape(-1)[:q.size].reshape(q.shape)), "out: shares memory with k_cache"),
           (dict(v=cp.asfortranarray(v)), "v_cache: expected a C-contiguous"),
           (dict(k_scale=cp.ones(2, np.float32), v_scale=cp.ones(2, np.float32)),
            "k_scale, v_scale: the plan has no kv_dtype")]
    refuse_launches(w, monkeypatch)
    for change, match in bad:
        call = dict(q=q, k=k, v=v, out=out, k_scale=None, v_scale=None) | change
        with pytest.raises((ValueError, TypeError), match=match):
            w.run(call["q"], call["k"], call["v"], out=call["out"], k_scale=call["k_scale"],
                  v_scale=call["v_scale"])
    assert bool(cp.isnan(out).all()), "nothing may be written by a refused run"


def test_a_new_static_scale_is_read_back_and_checked(rng, cp):
    p = compressed_problem(rng, [40, 9], "int8", "static")
    d = {n: cp.asarray(p[n]) for n in ("q", "kc", "vc", "ks", "vs", "tables", "lens")}
    w = BatchDecodeWrapper().plan(d["tables"], d["lens"], 4, 2, 64, 16, "float16",
                                  kv_dtype="int8")
    w.run(d["q"], d["kc"], d["vc"], k_scale=d["ks"], v_scale=d["vs"])
    bad = d["ks"].copy()
    bad[0] = np.inf
    with pytest.raises(ValueError, match="k_scale: every scale must be finite"):
        w.run(d["q"], d["kc"], d["vc"], k_scale=bad, v_scale=d["vs"])


def test_torch_tensors_after_cupy_arrays(rng, cp):
    torch = pytest.importorskip("torch")
    args = decode_problem(rng, [40, 9])
    dev = [cp.asarray(a) for a in args]
    w = BatchDecodeWrapper().plan(dev[3], dev[4], 4, 2, 64, 16, "float16")
    check_close(cp.asnumpy(w.run(*dev[:3])), reference(args), "float16")
    out = w.run(*(torch.from_dlpack(a) for a in dev[:3]))
    assert isinstance(out, torch.Tensor) and out.is_cuda
    check_close(out.cpu().numpy(), reference(args), "float16")


def test_run_refuses_another_current_device(rng, cp, monkeypatch):
    args = decode_problem(rng, [40, 9])
    dev = [cp.asarray(a) for a in args]
    w = BatchDecodeWrapper().plan(dev[3], dev[4], 4, 2, 64, 16, "float16")
    monkeypatch.setattr(w, "_current_device", lambda: w._device + 1)
    with pytest.raises(RuntimeError, match=f"the plan was made on GPU {w._device}"):
        w.run(*dev[:3])
