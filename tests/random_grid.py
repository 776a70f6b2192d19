"""Random problems over the public decode and prefill APIs, against the float64 reference.

The hand-written tests pick their sizes; a draw here picks them from everything the API
promises (every head size, groups 1..64, page sizes 1..256 that are not powers of two too,
fp32/fp16/bf16, int8 and fp8 pages with static or per-token scales, the kernel asked for or
chosen, split-K or not, a first page shared by every sequence, lengths around the page
and up to thousands of tokens), with NaN in every unused slot and the output poisoned with
NaN before the launch. One seed, one problem: a failure names its seed and its sizes.
"""
from __future__ import annotations

import numpy as np

from pagedattn_lab import (BatchDecodeWrapper, BatchPrefillWrapper, paged_attention_decode,
                           quant, reference_prefill_packed, slot_mapping, write_kv)
from pagedattn_lab.backend import cupy_module, to_numpy
from pagedattn_lab.cache_write_quant import write_kv_quant

from .decode_cases import TOL, bf16, decode_problem, reference
from .test_decode_tc_quant import quantized

HEAD_DIMS = [32, 64, 80, 96, 112, 128, 192, 256]
PAGE_SIZES = [1, 2, 3, 5, 8, 16, 24, 32, 64, 128, 256]
GROUPS = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64]
MAX_LEN = {"cpu": 1200, "gpu": 4000}   # the CPU executor runs one thread at a time
PREFILL_LEN = {"cpu": 300, "gpu": 700}   # CI's time: a prefill of 64 heads of 256 dims over
                                         # 700 tokens takes 28-38 s on the CPU executor


class Device:
    """Where a draw runs: NumPy on the CPU executor, CuPy on the GPU (bf16 as uint16 bits)."""

    def __init__(self, name: str):
        self.name = name
        self.cp = cupy_module() if name == "gpu" else None

    def put(self, a):
        if self.cp is None:
            return a
        return self.cp.asarray(a.view(np.uint16) if a.dtype == bf16() else a)

    def get(self, a, dtype: str) -> np.ndarray:
        host = to_numpy(a)
        if dtype == "bfloat16" and self.cp is not None:
            host = host.view(bf16())
        return host.astype(np.float64)

    def raw(self, a) -> np.ndarray:
        """The array's bytes as NumPy, whatever its dtype (bf16 bits, codes)."""
        return to_numpy(a).view(np.uint8)

    def poisoned(self, like):
        return self.put(np.full(like.shape, np.nan, np.float32).astype(like.dtype))


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """inf where an output is not finite (unwritten: still the poison, or NaN was read)."""
    if not np.isfinite(out).all():
        return float("inf")
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def _lengths(rng, page: int, max_len: int, count: int) -> list[int]:
    pool = [1, max(page - 1, 1), page, page + 1, 2 * page + 3, int(rng.integers(1, 300)),
            int(rng.integers(1, max_len))]
    return [min(int(rng.choice(pool)), max_len) for _ in range(count)]


def draw_decode(rng, device: Device) -> tuple[str, float, float]:
    """(description, relative error, tolerance) of one random decode step."""
    page = int(rng.choice(PAGE_SIZES))
    group = int(rng.choice(GROUPS))
    kv = int(rng.choice([1, 2, 3, 4, 8] if group <= 16 else [1, 2]))
    head_dim = int(rng.choice(HEAD_DIMS))
    dtype = str(rng.choice(["float16", "float16", "bfloat16", "float32"]))
    lens = _lengths(rng, page, MAX_LEN[device.name], int(rng.integers(1, 7)))
    quant = None if dtype == "float32" or rng.random() < 0.6 else \
        (str(rng.choice(["int8", "fp8_e4m3"])), str(rng.choice(["static", "per_token"])))
    kernel = str(rng.choice(["auto", "auto", "simt", "tensor_core"]))
    if dtype == "float32" and kernel == "tensor_core":   # fp32 stays on the SIMT kernel
        kernel = "simt"
    pages = [-(-n // page) for n in lens]
    shared = int(len(lens) > 1 and lens[0] >= page and all(p > 1 for p in pages[1:])
                 and rng.random() < 0.3)
    splits = None if rng.random() < 0.7 else int(rng.integers(1, 9))
    q, k, v, tables, seq_lens = args = decode_problem(
        rng, lens, page_size=page, num_heads=group * kv, num_kv_heads=kv, head_dim=head_dim,
        dtype=dtype, shared_prefix=shared)
    what = (f"decode {dtype}, kv {quant or 'as q'}, kernel {kernel}, heads {group * kv}/{kv}, "
            f"head_dim {head_dim}, page {page}, lens {lens}, shared first page {bool(shared)}, "
            f"splits {splits}")
    w = BatchDecodeWrapper()
    w.plan(device.put(tables), device.put(seq_lens), group * kv, kv, head_dim, page, dtype,
           kernel=kernel, num_splits=splits,
           **({} if quant is None else {"kv_dtype": quant[0], "scale_scheme": quant[1]}))
    what += f" (ran {w.kernel})"
    out = device.poisoned(q)
    if quant is None:
        ref = reference(args)
        got = w.run(device.put(q), device.put(k), device.put(v), out=out)
        tol = TOL[dtype]
    else:   # against the dequantized pages: only q's and out's rounding remain
        kc, vc, ks, vs, kd, vd = quantized(rng, args, *quant)
        if quant[0] == "int8":
            kc, vc = kc.view(np.int8), vc.view(np.int8)
        ref = reference((q, kd, vd, tables, seq_lens))
        got = w.run(device.put(q), device.put(kc), device.put(vc), out=out,
                    k_scale=device.put(ks), v_scale=device.put(vs))
        tol = 2 * TOL[dtype]
    err = relative_error(device.get(got, dtype), ref)
    if quant is None and err < tol and rng.random() < 0.3:   # the one-shot call as well
        one = paged_attention_decode(device.put(q), device.put(k), device.put(v),
                                     device.put(tables), device.put(seq_lens))
        what += ", one-shot call"
        err = relative_error(device.get(one, dtype), ref)
    return what, err, tol


def draw_prefill(rng, device: Device) -> tuple[str, float, float]:
    """(description, relative error, tolerance) of one random packed prefill batch: whole
    prompts, chunks over a cached prefix and decode tokens mixed."""
    page = int(rng.choice(PAGE_SIZES))
    group = int(rng.choice([1, 2, 4, 5, 8, 16]))
    kv = int(rng.choice([1, 2, 4]))
    head_dim = int(rng.choice([32, 64, 80, 96, 128, 256]))
    dtype = str(rng.choice(["float16", "bfloat16"]))
    top = PREFILL_LEN[device.name]
    lens = [int(rng.choice([1, page, page + 1, int(rng.integers(1, top))]))
            for _ in range(int(rng.integers(1, 5)))]
    q_lens = [int(rng.choice([1, n, max(1, n // 2), int(rng.integers(1, n + 1))]))
              for n in lens]
    _, k, v, tables, seq_lens = decode_problem(rng, lens, page_size=page, num_heads=group * kv,
                                               num_kv_heads=kv, head_dim=head_dim, dtype=dtype)
    indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = rng.standard_normal((int(indptr[-1]), group * kv, head_dim)).astype(np.float32)
    q = q.astype(bf16() if dtype == "bfloat16" else np.float16)
    ref = reference_prefill_packed(*(a.astype(np.float32) for a in (q, k, v)), indptr, tables,
                                   seq_lens)
    what = (f"prefill {dtype}, heads {group * kv}/{kv}, head_dim {head_dim}, page {page}, "
            f"lens {lens}, q_lens {q_lens}")
    w = BatchPrefillWrapper()
    w.plan(device.put(indptr), device.put(tables), device.put(seq_lens), group * kv, kv,
           head_dim, page, dtype)
    got = w.run(device.put(q), device.put(k), device.put(v), out=device.poisoned(q))
    return what, relative_error(device.get(got, dtype), ref), TOL[dtype]


def _stored(rng, device, k, v, tables, lens, q_lens, fmt, page):
    """Write every live token of (k, v) into fresh caches as a step does: the cached prefix
    in one write, this step's tokens in another with padding rows (slot -1) among them.
    Returns (device caches, their scales, the values they must hold as float32), after
    checking the caches' bytes against the NumPy reference of the write."""
    prefix = lens - q_lens
    batches = [(slot_mapping(tables, prefix, prefix, page), False),
               (slot_mapping(tables, lens, q_lens, page), bool(rng.random() < 0.5))]
    heads, dim = k.shape[2:]
    flat = [x.reshape(-1, heads, dim) for x in (k, v)]
    if fmt is None:
        caches = [np.full(k.shape, np.nan, np.float32).astype(k.dtype) for _ in "kv"]
        scales = None
    else:
        kv_dtype, scheme = fmt
        storage = quant.kv_format(kv_dtype).storage
        caches = [rng.integers(0, 256, k.shape).astype(np.uint8).view(storage) for _ in "kv"]
        live = np.concatenate([b[0] for b in batches])
        scales = [quant.static_scales(x[live], kv_dtype) if scheme == "static" else
                  rng.uniform(0.01, 0.2, k.shape[:3]).astype(np.float32) for x in flat]
    expected = [c.copy() for c in caches]
    want_scales = None if scales is None else [s.copy() for s in scales]
    dev = [device.put(c) for c in caches]
    dev_scales = None if scales is None else [device.put(s) for s in scales]
    for slots, pad in batches:
        if pad and slots.size:   # padding rows: written nowhere
            at = np.sort(rng.choice(slots.size + 1, int(rng.integers(1, 4))))
            slots = np.insert(slots, at, -1)
        rows = [x[np.maximum(slots, 0)] for x in flat]
        if fmt is None:
            write_kv(*(device.put(r) for r in rows), *dev, device.put(slots))
            for cache, r in zip(expected, rows):
                cache.reshape(-1, heads, dim)[slots[slots >= 0]] = r[slots >= 0]
        else:
            rows = [r.astype(np.float32) for r in rows]
            write_kv_quant(*(device.put(r) for r in rows), *dev, device.put(slots), *fmt,
                           *dev_scales)
            for cache, r, s in zip(expected, rows, want_scales):
                codes, got_s = quant.quantize_rows(r[slots >= 0], fmt[0], fmt[1],
                                                   s if fmt[1] == "static" else None)
                cache.reshape(-1, heads, dim)[slots[slots >= 0]] = codes
                if fmt[1] == "per_token":
                    s.reshape(-1, heads)[slots[slots >= 0]] = got_s
    for name, got, want in zip(("k_cache", "v_cache"), dev, expected):
        assert np.array_equal(device.raw(got), want.view(np.uint8)), f"{name}: written bytes"
    if fmt is None:
        return dev, None, [c.astype(np.float32) for c in expected]
    for name, got, want in zip(("k_scale", "v_scale"), dev_scales, want_scales):
        assert np.array_equal(device.raw(got), want.view(np.uint8)), f"{name}: written"
    values = [quant.dequantize(c, fmt[0], s) for c, s in zip(expected, want_scales)]
    return dev, dev_scales, values


def draw_step(rng, device: Device) -> tuple[str, float, float]:
    """(description, relative error, tolerance) of a serving step: the cached prefixes and
    this step's tokens written into the pages (16-bit, or quantized on write), then this
    step's queries attending over them with the prefill wrapper."""
    page = int(rng.choice(PAGE_SIZES))
    group, kv = int(rng.choice([1, 2, 4, 8, 16])), int(rng.choice([1, 2, 4]))
    head_dim = int(rng.choice([32, 64, 96, 128, 256]))
    dtype = str(rng.choice(["float16", "bfloat16"]))
    fmt = None if rng.random() < 0.5 else (str(rng.choice(["int8", "fp8_e4m3"])),
                                           str(rng.choice(["static", "per_token"])))
    if fmt is not None:
        dtype = "float16"
    lens = _lengths(rng, page, min(500, PREFILL_LEN[device.name]), int(rng.integers(1, 5)))
    q_lens = np.array([int(rng.choice([1, n, int(rng.integers(1, n + 1))])) for n in lens],
                      np.int32)
    _, k, v, tables, seq_lens = decode_problem(rng, lens, page_size=page, num_heads=group * kv,
                                               num_kv_heads=kv, head_dim=head_dim, dtype=dtype)
    what = (f"step {dtype}, kv {fmt or 'as q'}, heads {group * kv}/{kv}, head_dim {head_dim}, "
            f"page {page}, lens {lens}, q_lens {q_lens.tolist()}")
    (k_dev, v_dev), scales, (k_vals, v_vals) = _stored(rng, device, k, v, tables, seq_lens,
                                                       q_lens, fmt, page)
    indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = rng.standard_normal((int(indptr[-1]), group * kv, head_dim)).astype(np.float32)
    q = q.astype(bf16() if dtype == "bfloat16" else np.float16)
    ref = reference_prefill_packed(q.astype(np.float32), k_vals, v_vals, indptr, tables,
                                   seq_lens)
    w = BatchPrefillWrapper()
    w.plan(device.put(indptr), device.put(tables), device.put(seq_lens), group * kv, kv,
           head_dim, page, dtype,
           **({} if fmt is None else {"kv_dtype": fmt[0], "scale_scheme": fmt[1]}))
    extra = {} if scales is None else {"k_scale": scales[0], "v_scale": scales[1]}
    got = w.run(device.put(q), k_dev, v_dev, out=device.poisoned(q), **extra)
    return what, relative_error(device.get(got, dtype), ref), TOL[dtype] * (1 if fmt is None
                                                                             else 2)


def draw(seed: int, device: str) -> tuple[str, float, float]:
    rng = np.random.default_rng(seed)
    fn = rng.choice([draw_decode, draw_decode, draw_prefill, draw_step])
    return fn(rng, Device(device))
