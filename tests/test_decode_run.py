"""BatchDecodeWrapper.run's fast check (decode_run.RunLayout.fast) against its general check,
on the CPU executor: the common call takes the fast path, a good call first warms whatever
it caches, and every bad call after it is still refused naming the argument, before
anything launches. Also: rawkernel.pack_arguments, the GPU launches' argument slots."""
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab.rawkernel import pack_arguments

from .decode_cases import check_close, decode_problem, poisoned, reference
from .test_decode_quant import compressed_problem


def planned(args, dtype="float32", **kw):
    q, k, v, tables, lens = args
    return pl.BatchDecodeWrapper().plan(tables, lens, q.shape[1], k.shape[2], q.shape[2],
                                        k.shape[1], dtype, **kw)


def no_general_path(w, monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("the common call took the general path")
    monkeypatch.setattr(w, "_run_general", refuse)


def refuse_launches(w, monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("launched")
    monkeypatch.setattr(w, "_launches", [(refuse, 1, 1, lambda *a: (), 0)])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_common_call_takes_the_fast_path(rng, monkeypatch, dtype):
    args = decode_problem(rng, [40, 9, 1], dtype=dtype)
    q, k, v = args[:3]
    w = planned(args, dtype, num_splits=2)
    no_general_path(w, monkeypatch)
    out = poisoned(q.shape, dtype)
    assert w.run(q, k, v, out=out) is out
    check_close(out, reference(args), dtype)
    check_close(w.run(q, k, v, scale=0.3), reference(args, scale=0.3), dtype)
    check_close(w.run(q, k, v, scale=0.3), reference(args, scale=0.3), dtype)   # cached
    check_close(w.run(q, k, v, scale=0.5), reference(args, scale=0.5), dtype)


def test_compressed_per_token_scales_take_the_fast_path(rng, monkeypatch):
    p = compressed_problem(rng, [40, 9], "int8", "per_token")
    w = pl.BatchDecodeWrapper().plan(p["tables"], p["lens"], 4, 2, 64, 16, "float16",
                                     kv_dtype="int8", scale_scheme="per_token")
    first = w.run(p["q"], p["kc"], p["vc"], k_scale=p["ks"], v_scale=p["vs"]).copy()
    no_general_path(w, monkeypatch)
    again = w.run(p["q"], p["kc"], p["vc"], k_scale=p["ks"], v_scale=p["vs"])
    np.testing.assert_array_equal(first, again)


# Each case: a call changed from the good one (after it ran), and what the error must name.
def _offset(x):
    return np.empty(x.size + 1, x.dtype)[1:].reshape(x.shape)


BAD_AFTER_GOOD = {
    "q dtype": (lambda c: dict(q=c["q"].astype(np.float16)), "q: the plan is for float32"),
    "q shape": (lambda c: dict(q=c["q"][:1]), r"q: expected shape \(2, 4, 64\)"),
    "q offset view": (lambda c: dict(q=_offset(c["q"])), "q: expected data starting on a 16"),
    "q not contiguous": (lambda c: dict(q=c["q"][:, ::-1]),
                         r"q: expected a C-contiguous .*call np\.ascontiguousarray\(q\) first"),
    "q list": (lambda c: dict(q=c["q"].tolist()), "q: the plan runs on the CPU"),
    "smaller cache": (lambda c: dict(k=np.ascontiguousarray(c["k"][:c["max_page"]]),
                                     v=np.ascontiguousarray(c["v"][:c["max_page"]])),
                      "k_cache: the plan reads page"),
    "k dtype": (lambda c: dict(k=c["k"].astype(np.float16)), "k_cache: the plan is for float32"),
    "k layout": (lambda c: dict(k=np.ascontiguousarray(c["k"][:, :, :1])), r"k_cache: expected shape"),
    "v shape": (lambda c: dict(v=c["v"][:-1].copy()), "v_cache: expected the shape of k_cache"),
    "out is q": (lambda c: dict(out=c["q"]), "out: shares memory with q"),
    "out in k": (lambda c: dict(out=c["k"].reshape(-1)[64:64 + c["q"].size].reshape(c["q"].shape)),
                 "out: shares memory with k_cache"),
    "out in v": (lambda c: dict(out=c["v"].reshape(-1)[:c["q"].size].reshape(c["q"].shape)),
                 "out: shares memory with v_cache"),
    "out read-only": (lambda c: dict(out=_read_only(c["out"])), "out: expected a writeable"),
    "out dtype": (lambda c: dict(out=c["out"].astype(np.float16)), "out: the plan is for float32"),
    "out offset view": (lambda c: dict(out=_offset(c["out"])), "out: expected data starting"),
    "scales on a plain cache": (lambda c: dict(k_scale=np.ones(2, np.float32),
                                               v_scale=np.ones(2, np.float32)),
                                "k_scale, v_scale: the plan has no kv_dtype"),
    "scale True after 1": (lambda c: dict(scale=True), "scale: expected a float"),
    "scale negative": (lambda c: dict(scale=-0.3), "scale: expected a positive number"),
    "scale nan": (lambda c: dict(scale=float("nan")), "scale: expected a finite number"),
}


def _read_only(x):
    x = x.copy()
    x.setflags(write=False)
    return x


@pytest.mark.parametrize("case", sorted(BAD_AFTER_GOOD))
def test_bad_calls_after_a_good_one_are_refused(rng, monkeypatch, case):
    args = decode_problem(rng, [40, 9], dtype="float32", spare_pages=0)
    q, k, v = args[:3]
    w = planned(args)
    out = poisoned(q.shape, "float32")
    check_close(w.run(q, k, v, out=out, scale=1), reference(args, scale=1), "float32")
    out[...] = np.nan
    good = dict(q=q, k=k, v=v, out=out, scale=1)
    change, match = BAD_AFTER_GOOD[case]
    call = good | change(dict(good, max_page=w.max_page))
    before = [a.copy() for a in (q, k, v)]
    refuse_launches(w, monkeypatch)
    with pytest.raises((ValueError, TypeError), match=match):
        w.run(call["q"], call["k"], call["v"], out=call["out"], scale=call["scale"],
              k_scale=call.get("k_scale"), v_scale=call.get("v_scale"))
    assert np.isnan(out).all(), "nothing may be written by a refused run"
    for a, b in zip(before, (q, k, v)):
        np.testing.assert_array_equal(a, b)


def test_torch_tensors_after_numpy_arrays(rng):
    torch = pytest.importorskip("torch")
    args = decode_problem(rng, [40, 9], dtype="float32")
    q, k, v = args[:3]
    w = planned(args)
    check_close(w.run(q, k, v), reference(args), "float32")
    out = w.run(*(torch.from_numpy(a) for a in (q, k, v)))
    assert isinstance(out, torch.Tensor)
    check_close(out.numpy(), reference(args), "float32")
    with pytest.raises(TypeError, match=r"q: expected dtype torch\.float32 \(as planned\), got "
                                        r"torch\.float64"):
        w.run(torch.from_numpy(q).double(), k, v)


def test_a_static_numpy_scale_is_checked_on_every_call(rng):
    p = compressed_problem(rng, [40, 9], "int8", "static")
    w = pl.BatchDecodeWrapper().plan(p["tables"], p["lens"], 4, 2, 64, 16, "float16",
                                     kv_dtype="int8")
    w.run(p["q"], p["kc"], p["vc"], k_scale=p["ks"], v_scale=p["vs"])
    p["ks"][1] = np.nan   # the same array, changed in place
    with pytest.raises(ValueError, match="k_scale: every scale must be finite"):
        w.run(p["q"], p["kc"], p["vc"], k_scale=p["ks"], v_scale=p["vs"])


@pytest.mark.parametrize("change, match", [
    (dict(k_scale="half"), "k_scale: expected dtype float32"),
    (dict(v_scale="short"), r"v_scale: expected shape \(\d+, 16, 2\)"),
    (dict(k_scale="strided"), "k_scale: expected a C-contiguous"),
    (dict(k_scale="small cache"), "k_cache: the plan reads page"),
])
def test_per_token_scales_after_a_good_call(rng, monkeypatch, change, match):
    p = compressed_problem(rng, [40, 9], "int8", "per_token")
    w = pl.BatchDecodeWrapper().plan(p["tables"], p["lens"], 4, 2, 64, 16, "float16",
                                     kv_dtype="int8", scale_scheme="per_token")
    w.run(p["q"], p["kc"], p["vc"], k_scale=p["ks"], v_scale=p["vs"])
    kc, vc, ks, vs = p["kc"], p["vc"], p["ks"], p["vs"]
    how = next(iter(change.values()))
    if how == "half":
        ks = ks.astype(np.float16)
    elif how == "short":
        vs = vs[:-1].copy()
    elif how == "strided":
        ks = np.repeat(ks, 2, axis=2)[:, :, ::2]
    else:
        kc, vc = kc[:w.max_page].copy(), vc[:w.max_page].copy()
        ks, vs = ks[:w.max_page].copy(), vs[:w.max_page].copy()
    refuse_launches(w, monkeypatch)
    with pytest.raises((ValueError, TypeError), match=match):
        w.run(p["q"], kc, vc, k_scale=ks, v_scale=vs)


def general_accepts(w, monkeypatch, q, k, v, out, k_scale=None, v_scale=None) -> bool:
    """Whether the general path (the full checks) accepts the call; nothing launches."""
    monkeypatch.setattr(w, "_launch", lambda *a: None)
    try:
        w._run_general(q, k, v, out, None, k_scale, v_scale)
    except (ValueError, TypeError):
        return False
    finally:
        monkeypatch.undo()
    return True


def test_the_fast_check_accepts_only_what_the_general_check_accepts(rng, monkeypatch):
    """Every variant of a call: the fast check says yes only where the general one does,
    and yes on the plain good calls (else the fast path would silently be lost)."""
    args = decode_problem(rng, [40, 9], dtype="float32", spare_pages=1)
    q, k, v = args[:3]
    w = planned(args)
    out = poisoned(q.shape, "float32")
    big = np.empty((2,) + k.shape, np.float32)
    variants = {"good": (q, k, v, out), "good, out=None": (q, k, v, None),
                "bigger cache": (q, np.concatenate([k, k]), np.concatenate([v, v]), out),
                "one page more than read": (q, k[:w.max_page + 1].copy(),
                                            v[:w.max_page + 1].copy(), out),
                "size-1 axis with odd strides": (q, k, v, np.empty((2, 4, 1, 64), np.float32)[:, :, 0]),
                "out in the next cache": (q, k, v, big[1].reshape(-1)[:q.size].reshape(q.shape)),
                "k = v": (q, k, k, out)}
    for case, (change, _) in BAD_AFTER_GOOD.items():
        c = dict(q=q, k=k, v=v, out=out) | change(dict(q=q, k=k, v=v, out=out,
                                                       max_page=w.max_page))
        variants[case] = (c["q"], c["k"], c["v"], c["out"])
    for case, (vq, vk, vv, vo) in variants.items():
        fast = w._layout.fast(vq, vk, vv, vo, None, None)
        if fast is not None:
            assert general_accepts(w, monkeypatch, vq, vk, vv, vo), case
        if case.startswith("good") or case in ("bigger cache", "one page more than read", "k = v"):
            assert fast is not None, f"{case}: the fast check refused a good call"


def test_pack_arguments_places_each_argument():
    class FakeCupyArray:   # what pack_arguments reads of a cupy.ndarray
        class data:
            ptr = 0x7F00_0000_1000
    FakeCupyArray.__module__ = "cupy.fake"
    fixed = FakeCupyArray()
    values, slots = pack_arguments(
        lambda a, b, c: (b, fixed, np.int32(-3), a, np.float32(0.5), np.int64(2**40), c), 3)
    assert slots == [1, 3, 4, 0, 5, 6, 2]
    assert values == [0, 0, 0, 0x7F00_0000_1000, 0xFFFF_FFFD, 0x3F00_0000, 2**40]
    for bad in (3, 0.5, np.zeros(2, np.float32), np.complex128(1)):
        with pytest.raises(TypeError, match="kernel 'k': argument 1 .* cannot be packed"):
            pack_arguments(lambda a, bad=bad: (a, bad), 1, "k")


class FakeCupy:
    """What PackedLaunch asks of CuPy: CPointer."""
    class cuda:
        class function:
            class CPointer:
                def __init__(self, p):
                    self.ptr = p


class RecordingKernel:
    """A cupy.RawKernel stand-in whose function reads each argument slot when launched."""
    name = "recording"

    def __init__(self):
        self.launched = []

    @property
    def kernel(self):
        def function(grid, block, args, shared):
            import ctypes
            self.launched.append((grid, block, shared,
                                  [ctypes.c_uint64.from_address(a.ptr).value for a in args]))
        return function


def test_packed_launches_pass_each_run_its_own_values(rng, monkeypatch):
    """The GPU branch of run(), on stand-ins: every launch gets q, k, v, out, the scale's bits
    and the scale arrays where make_args puts them, and the plan's fixed values elsewhere."""
    from pagedattn_lab import backend
    from pagedattn_lab.rawkernel import PackedLaunch
    monkeypatch.setattr(backend, "cupy_module", lambda: FakeCupy)
    args = decode_problem(rng, [40, 9], dtype="float32")
    q, k, v = args[:3]
    w = planned(args, num_splits=2)
    kern = RecordingKernel()
    w._launches = [(PackedLaunch(kern, (3, 2, 1), (128,), 64, lambda q, k, v, out, s, ks, vs:
                                 (np.int32(7), out, q, s, k, v, np.float32(2.0), ks, vs), 7),)
                   + entry[1:] for entry in w._launches[:1]]
    w.on_gpu, w._current_device, w._device = True, lambda: 0, 0
    ptr = w._layout.pointer
    for scale in (None, 0.5):
        out = np.empty_like(q)
        w.run(q, k, v, out=out, scale=scale)
        s = np.float32((1 / 8 if scale is None else scale) * 1.4426950408889634)
        assert kern.launched[-1] == ((3, 2, 1), (128,), 64, [
            7, ptr(out), ptr(q), int(s.view(np.uint32)), ptr(k), ptr(v), 0x4000_0000,
            ptr(w._no_scale), ptr(w._no_scale)])
