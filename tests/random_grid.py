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
                           reference_prefill_packed)
from pagedattn_lab.backend import cupy_module

from .decode_cases import TOL, bf16, decode_problem, reference
from .test_decode_tc_quant import quantized

HEAD_DIMS = [32, 64, 80, 96, 112, 128, 192, 256]
PAGE_SIZES = [1, 2, 3, 5, 8, 16, 24, 32, 64, 128, 256]
GROUPS = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64]
MAX_LEN = {"cpu": 1200, "gpu": 4000}   # the CPU executor runs one thread at a time


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
        host = np.asarray(a) if self.cp is None else self.cp.asnumpy(a)
        if dtype == "bfloat16" and self.cp is not None:
            host = host.view(bf16())
        return host.astype(np.float64)

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
    top = min(700, MAX_LEN[device.name])
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


def draw(seed: int, device: str) -> tuple[str, float, float]:
    rng = np.random.default_rng(seed)
    fn = draw_decode if rng.random() < 0.7 else draw_prefill
    return fn(rng, Device(device))
