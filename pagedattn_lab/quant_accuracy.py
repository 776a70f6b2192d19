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

from .attention_common import to_elements
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
    """x as the cache would give it back: fp16 (past its range: inf, as the cache stores
    it), or codes * scales."""
    if kv_dtype == "float16":
        return to_elements(x, np.dtype(np.float16), np).astype(np.float32)
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


# -- the serving engine: greedy tokens over a compressed cache -------------------------------

class Agreement(NamedTuple):
    kv_dtype: str
    scheme: str
    identical: float     # fraction of requests whose greedy tokens all equal the fp16 cache's
    prefix: float        # mean fraction of tokens before the first difference
    positions: float     # fraction of token positions that agree


def calibrate_kv_scales(model, prompts, kv_dtype: str, max_tokens: int = 8, **engine_kw):
    """Static scales (k, v), each float32 [num_layers, num_kv_heads]: amax / qmax of what
    an uncompressed cache holds after generating from `prompts` (calibration prompts: use
    other ones than those you then measure)."""
    from .backend import to_numpy  # noqa: PLC0415
    from .engine import EngineConfig, LLMEngine, SamplingParams  # noqa: PLC0415
    from .quant import kv_format  # noqa: PLC0415
    engine = LLMEngine(model, EngineConfig(**engine_kw))
    engine.generate(prompts, SamplingParams(max_tokens=max_tokens))
    qmax = np.float32(kv_format(kv_dtype).qmax)

    def scales(caches):   # never-written slots hold zeros: they do not move the amax
        amax = np.stack([np.abs(to_numpy(c).astype(np.float32)).max(axis=(0, 1, 3))
                         for c in caches])
        return np.where(amax > 0, amax / qmax, np.float32(1)).astype(np.float32)
    return scales(engine.store.k), scales(engine.store.v)


def greedy_tokens(model, prompts, max_tokens: int = 32, kv_dtype: str | None = None,
                  scheme: str = "per_token", kv_scales=None, **engine_kw) -> list[list[int]]:
    """The greedy tokens `model` generates from each of `prompts` (max_tokens each, no stop
    at EOS) over an uncompressed cache, or a `kv_dtype` one. engine_kw: EngineConfig fields."""
    from .engine import EngineConfig, LLMEngine, SamplingParams  # noqa: PLC0415
    config = EngineConfig(**engine_kw) if kv_dtype is None else \
        EngineConfig(**engine_kw, kv_dtype=kv_dtype, kv_scale_scheme=scheme)
    engine = LLMEngine(model, config, kv_scales=kv_scales if kv_dtype is not None else None)
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return [list(out.output_ids) for out in engine.generate(prompts, params)]


def greedy_agreement(model, prompts, kv_dtype: str, scheme: str = "per_token",
                     max_tokens: int = 32, kv_scales=None, reference=None,
                     **engine_kw) -> Agreement:
    """Generate greedily from `prompts` with `model` over a `kv_dtype` cache (static scales:
    `kv_scales`, see calibrate_kv_scales) and compare the tokens with `reference`, those of
    an uncompressed cache (greedy_tokens with the same arguments; generated here if None:
    pass it to compare several formats with one uncompressed run)."""
    if reference is None:
        reference = greedy_tokens(model, prompts, max_tokens, **engine_kw)
    elif len(reference) != len(prompts) or any(len(r) != max_tokens for r in reference):
        raise ValueError(f"reference: expected {len(prompts)} lists of max_tokens={max_tokens} "
                         f"tokens (greedy_tokens of the same prompts), got "
                         f"{[len(r) for r in reference]} tokens for {len(reference)} prompts")
    compressed = greedy_tokens(model, prompts, max_tokens, kv_dtype, scheme, kv_scales,
                               **engine_kw)
    same = [np.asarray(a) == np.asarray(b) for a, b in zip(reference, compressed)]
    first_diff = [int(np.argmin(s)) if not s.all() else s.size for s in same]
    return Agreement(kv_dtype, scheme, float(np.mean([s.all() for s in same])),
                     float(np.mean([n / s.size for n, s in zip(first_diff, same)])),
                     float(np.mean(np.concatenate(same))))
