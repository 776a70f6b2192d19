"""The model's fused elementwise ops (`kernels/llama_ops.cu`): one launch where CuPy needs many.

A decode step is tiny work on the GPU (a few milliseconds of weights read) and a long list of
launches on the host: RMSNorm written with array ops is ~8 kernels, RoPE ~8 for q and again for
k, SiLU-times-up 5, the cache write 2. Each CuPy launch costs the host ~10-20 us, so a 16-layer
model spent most of its step launching. These ops do the same arithmetic, rounded the same
way (see the kernel source), in one launch each:

    ops = LlamaOps(np.float16)
    x, h = ops.rms_norm(x, weight, eps, delta)      # x += delta; h = RMSNorm(x) * weight
    q = ops.rope_qkv(qkv, positions, cos, sin, slots, k_cache, v_cache, heads, kv_heads)
    act = ops.silu_mul(gate_up)                     # silu(gate) * up

Arrays are NumPy (the CPU executor runs the kernels: that is how the tests check them) or
CuPy. Arguments are checked on the first launch of each kernel (the course's RawKernel checks
them against the kernel's signature); after that the GPU launches go straight to CuPy.
"""
from __future__ import annotations

import numpy as np

from ..attention_common import fast_path
from ..backend import check_contiguous, is_cupy_array
from ..kernels import kernel

THREADS = 256   # OPS_THREADS in llama_ops.cu


class LlamaOps:
    """The fused ops for one model dtype (float32 or float16)."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float16):
            raise TypeError(f"dtype: expected float32 or float16, got {self.dtype}")
        options = (f"-DKV_T={'__half' if self.dtype == np.float16 else 'float'}",)
        self._kernels = {name: kernel("llama_ops", name, options)
                         for name in ("rms_norm", "rope_qkv", "silu_mul")}
        self._checked = set()

    def _launch(self, name, grid, args):
        kern = self._kernels[name]
        on_gpu = is_cupy_array(args[0])
        if name in self._checked and on_gpu:
            kern = fast_path(kern, on_gpu)
        kern((grid,), (THREADS,), args)
        if on_gpu:
            self._checked.add(name)

    def _check(self, name, x, ndim, shape=None):
        if not hasattr(x, "dtype") or x.dtype != self.dtype or x.ndim != ndim:
            raise TypeError(f"{name}: expected a {ndim}-d {self.dtype} array, got "
                            f"{getattr(x, 'dtype', type(x).__name__)} of shape "
                            f"{getattr(x, 'shape', None)}")
        if shape is not None and tuple(x.shape) != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(x.shape)}")
        check_contiguous(x, name)

    def rms_norm(self, x, weight, eps: float, delta=None):
        """(x, RMSNorm(x) * weight) of x [rows, hidden]; with `delta`, x is first replaced,
        in place, by x + delta (the residual add), and that x is returned."""
        self._check("x", x, 2)
        rows, hidden = (int(n) for n in x.shape)
        self._check("weight", weight, 1, (hidden,))
        if delta is not None:
            self._check("delta", delta, 2, x.shape)
        out = (np if isinstance(x, np.ndarray) else _cupy()).empty_like(x)
        if rows:
            self._launch("rms_norm", rows, (x, x if delta is None else delta, weight, x, out,
                                            np.int32(rows), np.int32(hidden), np.float32(eps),
                                            np.int32(delta is not None)))
        return x, out

    def rope_qkv(self, qkv, positions, cos, sin, slots, k_cache, v_cache, heads: int,
                 kv_heads: int):
        """Rotated q [n, heads, head_dim] of the packed projection qkv [n, (heads + 2 *
        kv_heads) * head_dim]; rotated k and v go to cache slot slots[t] (int64, -1: skip) of
        k_cache, v_cache [num_pages, page_size, kv_heads, head_dim]. positions: int64 [n];
        cos, sin: float32 [max_positions, head_dim / 2]."""
        head_dim = int(k_cache.shape[-1])
        self._check("k_cache", k_cache, 4)
        self._check("v_cache", v_cache, 4, k_cache.shape)
        if tuple(k_cache.shape[2:]) != (kv_heads, head_dim) or head_dim % 2:
            raise ValueError(f"k_cache: expected [num_pages, page_size, {kv_heads}, even "
                             f"head_dim], got {tuple(k_cache.shape)}")
        self._check("qkv", qkv, 2)
        n = int(qkv.shape[0])
        if qkv.shape[1] != (heads + 2 * kv_heads) * head_dim:
            raise ValueError(f"qkv: expected {(heads + 2 * kv_heads) * head_dim} columns "
                             f"((heads + 2 * kv_heads) * head_dim), got {qkv.shape[1]}")
        for name, a, dtype in (("positions", positions, np.int64), ("slots", slots, np.int64)):
            if a.dtype != dtype or tuple(a.shape) != (n,):
                raise ValueError(f"{name}: expected {np.dtype(dtype)} of shape ({n},), got "
                                 f"{a.dtype} {tuple(a.shape)}")
        for name, a in (("cos", cos), ("sin", sin)):
            if a.dtype != np.float32 or a.ndim != 2 or a.shape[1] != head_dim // 2:
                raise ValueError(f"{name}: expected float32 [max_positions, {head_dim // 2}], "
                                 f"got {a.dtype} {tuple(a.shape)}")
        xp = np if isinstance(qkv, np.ndarray) else _cupy()
        q = xp.empty((n, heads, head_dim), dtype=self.dtype)
        if n:
            self._launch("rope_qkv", n, (qkv, positions, cos, sin, slots, q, k_cache, v_cache,
                                         np.int32(n), np.int32(heads), np.int32(kv_heads),
                                         np.int32(head_dim)))
        return q

    def silu_mul(self, gate_up):
        """silu(gate) * up ([n, inter]) of gate_up [n, 2 * inter] (gate | up)."""
        self._check("gate_up", gate_up, 2)
        n, width = (int(s) for s in gate_up.shape)
        if width % 2:
            raise ValueError(f"gate_up: expected an even number of columns (gate | up), got "
                             f"{width}")
        xp = np if isinstance(gate_up, np.ndarray) else _cupy()
        out = xp.empty((n, width // 2), dtype=self.dtype)
        if out.size:
            self._launch("silu_mul", -(-out.size // THREADS),
                         (gate_up, out, np.int32(n), np.int32(width // 2)))
        return out


def _cupy():
    from ..backend import cupy_module  # noqa: PLC0415 - CuPy only when arrays live there
    return cupy_module()
