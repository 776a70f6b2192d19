"""What compressing the KV cache costs in accuracy: the attention-output error of each format
and scale scheme against the float64 reference, on normal data and on keys with outlier
channels (a few channels many times larger than the rest, as real models' keys have).

    rows = accuracy_table()          # list of AccuracyRow
    print(format_table(rows))

The error is that of the cache alone: the reference attention (float64) over the
dequantized cache against the same over the original values, so the kernels' own fp16
rounding (checked separately in the tests) does not blur it. fp16 is the baseline row.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .quant import FORMATS, SCHEMES, dequantize, per_token_scales, quantize, static_scales

DATA = ("normal", "outliers")


class AccuracyRow(NamedTuple):
    kv_dtype: str        # "float16", "int8", "fp8_e4m3"
    scheme: str          # "-", "static", "per_token"
    data: str            # "normal" or "outliers"
    rel_error: float     # ||out - ref|| / ||ref|| over all queries and heads
    max_error: float     # max |out - ref| / max |ref|
    bytes_per_elem: float


def sample_kv(rng, n_tokens: int, num_kv_heads: int, head_dim: int, data: str,
              outlier_channels: int = 4, outlier_gain: float = 20.0):
    """K, V [n_tokens, num_kv_heads, head_dim] float32; with data="outliers" a few key
    channels per head are `outlier_gain` times larger (V stays normal, as in real models)."""
    k = rng.standard_normal((n_tokens, num_kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((n_tokens, num_kv_heads, head_dim)).astype(np.float32)
    if data == "outliers":
        for h in range(num_kv_heads):
            k[:, h, rng.choice(head_dim, outlier_channels, replace=False)] *= outlier_gain
    elif data != "normal":
        raise ValueError(f"data: expected one of {DATA}, got {data!r}")
    return k, v


def round_trip(x, kv_dtype: str, scheme: str):
    """x as the cache would give it back: fp16, or codes * scales."""
    if kv_dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if scheme == "static":
        scale = static_scales(x, kv_dtype)
    else:
        scale = per_token_scales(x, kv_dtype)
    return dequantize(quantize(x, kv_dtype, scale), kv_dtype, scale)


def attention(q, k, v) -> np.ndarray:
    """float64 causal attention of q [n, heads, dim] over k, v [n, kv_heads, dim] (GQA)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    n, heads, dim = q.shape
    group = heads // k.shape[1]
    kk, vv = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    logits = np.einsum("qhd,khd->hqk", q, kk) / np.sqrt(dim)
    logits = np.where(np.tril(np.ones((n, n), bool)), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("hqk,khd->qhd", w / w.sum(-1, keepdims=True), vv)


def accuracy_table(n_tokens: int = 128, num_heads: int = 8, num_kv_heads: int = 2,
                   head_dim: int = 128, seed: int = 0) -> list[AccuracyRow]:
    """One row per (format, scheme, data); see the module docstring."""
    rows = []
    configs = [("float16", "-")] + [(f, s) for f in FORMATS for s in SCHEMES]
    for data in DATA:
        rng = np.random.default_rng(seed)
        k, v = sample_kv(rng, n_tokens, num_kv_heads, head_dim, data)
        q = rng.standard_normal((n_tokens, num_heads, head_dim)).astype(np.float32)
        ref = attention(q, k, v)
        for kv_dtype, scheme in configs:
            out = attention(q, round_trip(k, kv_dtype, scheme), round_trip(v, kv_dtype, scheme))
            err = np.abs(out - ref)
            per_token = 8 / head_dim if scheme == "per_token" else 0.0   # 2 float32 / 2 dims
            rows.append(AccuracyRow(kv_dtype, scheme, data,
                                    float(np.linalg.norm(out - ref) / np.linalg.norm(ref)),
                                    float(err.max() / np.abs(ref).max()),
                                    (2.0 if kv_dtype == "float16" else 1.0) + per_token / 2))
    return rows


def format_table(rows) -> str:
    lines = [f"{'kv_dtype':>9} {'scales':>9} {'data':>8} {'bytes/elem':>10} "
             f"{'rel. error':>10} {'max error':>10}"]
    for r in rows:
        lines.append(f"{r.kv_dtype:>9} {r.scheme:>9} {r.data:>8} {r.bytes_per_elem:>10.3f} "
                     f"{r.rel_error:>10.1e} {r.max_error:>10.1e}")
    return "\n".join(lines)
