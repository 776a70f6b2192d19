"""`BatchPrefillWrapper`: packed, variable-length prefill on tensor cores, in FlashInfer's shape.

    w = BatchPrefillWrapper()
    w.plan(qo_indptr, block_tables, seq_lens, num_heads, num_kv_heads, head_dim, page_size,
           np.float16, causal=True)                    # once per step: all host work
    out = w.run(q, k_cache, v_cache)                   # per layer: one launch

q is packed `[total_q, num_heads, head_dim]`: sequence b's queries are rows
`qo_indptr[b]:qo_indptr[b+1]`, and they are its last q_len tokens (`seq_lens[b]` counts every
cached token, the new ones included, whose K/V are already written, e.g. by
`cache_write.write_kv`). So one batch can mix all-new prompts (q_len == seq_len), chunks of
long prompts over a cached prefix, and decode tokens (q_len 1). Causal masks are aligned
bottom-right: query i sees keys 0 .. seq_len - q_len + i.

The kernel is `kernels/prefill_tc.cu` (WMMA, FlashAttention-2 style). `plan` validates the
tables once, cuts every sequence's queries into tiles of `16 * warps` rows (the work list,
longest first), picks the compiled variant and moves the index arrays to the device. `run`
checks only what can change between layers (the arrays' shapes, dtypes and place, and that
the cache holds the planned pages) and launches; with `out=` it allocates nothing.

Element types: fp16 everywhere; bf16 as `ml_dtypes.bfloat16` arrays on the CPU and, since
CuPy has no bfloat16 dtype, as uint16 CuPy arrays holding the bf16 bits on the GPU.

Compressed pages (`quant.py`): `plan(..., kv_dtype="int8" | "fp8_e4m3",
scale_scheme="static" | "per_token")`, then `run(q, k_cache, v_cache, k_scale=, v_scale=)`
with int8 / uint8 caches and float32 scales ([num_kv_heads], or [num_pages, page_size,
num_kv_heads] per token). The kernel dequantizes as it stages each K/V tile.
"""
from __future__ import annotations

import numpy as np

from .attention_common import LOG2E, aligned16, allow_shared_memory, fast_path, prepare_out
from .backend import array_module, is_cupy_array, to_numpy
from .kernels import kernel as load_kernel
from .quant import check_run_scales, check_scheme, kv_format
from .validate import (check_array, check_block_tables, check_bool, check_int, check_out,
                       check_plan_sizes, resolve_scale)

HEAD_DIMS = (32, 64, 80, 96, 112, 128, 192, 256)
KV_TILE = 64


def _bf16():
    try:
        import ml_dtypes  # noqa: PLC0415 - optional: bf16 on the CPU
    except ImportError:  # pragma: no cover - a dependency of the course
        return None
    return np.dtype(ml_dtypes.bfloat16)


def element_type(dtype) -> tuple[str, np.dtype]:
    """(CUDA element type, the dtype arrays must have) for a prefill dtype."""
    bf16 = _bf16()
    if isinstance(dtype, str) and dtype in ("bfloat16", "bf16"):
        dtype = bf16
    try:
        dtype = np.dtype(dtype)
    except TypeError:   # NumPy's "data type not understood" would name no argument
        raise TypeError(f"dtype: expected float16 or bfloat16, got {dtype!r}") from None
    if dtype == np.float16:
        return "__half", dtype
    if bf16 is not None and dtype == bf16:
        return "__nv_bfloat16", dtype
    raise TypeError(f"dtype: expected float16 or bfloat16 (tensor cores take 16-bit inputs; "
                    f"fp32 prefill runs on paged_attention_prefill), got {dtype}")


def _accepts(array_dtype, planned: np.dtype, on_gpu: bool) -> bool:
    if array_dtype == planned:
        return True
    return on_gpu and planned != np.float16 and array_dtype == np.uint16   # bf16 bits


def warps_for(max_q_len: int) -> int:
    """Query rows per block = 16 * warps: one warp for decode-like batches, eight for long
    prompts (each K/V tile then serves 128 queries: 87 against 71 TFLOP/s with four, H200,
    benchmarks/NOTES.md), four in between."""
    if max_q_len <= 16:
        return 1
    return 8 if max_q_len >= 128 else 4


def shared_bytes(head_dim: int, warps: int, elem_size: int = 2) -> int:
    """Dynamic shared memory of one block; mirrors `carve` in prefill_tc.cu."""
    stage_rows = max(2 * KV_TILE, 16 * warps)          # K and V of a tile, or the Q tile
    kv = 2 * stage_rows * (head_dim + 8) * elem_size    # two stages
    scratch = warps * 16 * (max(KV_TILE, 64) + 4) * 4
    p = warps * 16 * (KV_TILE + 8) * elem_size
    return kv + scratch + p + warps * 16 * 4


def work_list(indptr: np.ndarray, lens: np.ndarray, rows: int, causal: bool) -> np.ndarray:
    """int32 [n, 2]: (sequence, first query) of every tile, the tiles with most keys first."""
    q_lens = np.diff(indptr)
    tiles = -(-q_lens // rows)
    seq = np.repeat(np.arange(q_lens.size), tiles)
    first = (np.arange(seq.size) - np.repeat(np.cumsum(tiles) - tiles, tiles)) * rows
    last_pos = lens[seq] - q_lens[seq] + np.minimum(first + rows, q_lens[seq]) - 1
    keys = last_pos + 1 if causal else lens[seq]
    order = np.argsort(-keys, kind="stable")
    return np.stack([seq[order], first[order]], axis=1).astype(np.int32)


class BatchPrefillWrapper:
    """Plan once per step, run once per layer. See the module docstring."""

    def __init__(self):
        self.planned = False
        self._seen_scales = set()   # CuPy static scales already checked (quant.check_run_scales)

    def plan(self, qo_indptr, block_tables, seq_lens, num_heads: int, num_kv_heads: int,
             head_dim: int, page_size: int, dtype, causal: bool = True,
             warps: int | None = None, kv_dtype: str | None = None,
             scale_scheme: str = "static"):
        """All host work for one batch. The device is where `block_tables` lives (CuPy: the
        GPU; NumPy: the CPU executor). `warps` (1, 2, 4 or 8; query rows per block = 16 *
        warps) overrides the automatic choice. Raises before changing the wrapper if
        anything is off."""
        num_heads, num_kv_heads, head_dim, page_size = check_plan_sizes(
            num_heads, num_kv_heads, head_dim, page_size)
        if head_dim not in HEAD_DIMS:
            raise ValueError(f"head_dim: expected one of {HEAD_DIMS}, got {head_dim}")
        elem, array_dtype = element_type(dtype)
        fmt = None if kv_dtype is None else kv_format(kv_dtype)
        check_scheme(scale_scheme)
        check_bool(causal, "causal")
        check_array(qo_indptr, "qo_indptr", ndim=1, dtypes=[np.int32])
        indptr = to_numpy(qo_indptr).astype(np.int64)
        batch = indptr.size - 1
        if batch < 0 or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            raise ValueError(f"qo_indptr: expected [batch + 1] non-decreasing offsets from 0, "
                             f"got {indptr.tolist()[:8]}")
        tables, lens = check_block_tables(block_tables, seq_lens, num_pages=2**31 - 1,
                                          page_size=page_size, batch=batch, min_len=0)
        q_lens = np.diff(indptr)
        too_many = np.flatnonzero(q_lens > lens)
        if too_many.size:
            b = int(too_many[0])
            raise ValueError(f"qo_indptr: sequence {b} has {int(q_lens[b])} queries but "
                             f"seq_lens[{b}] is {int(lens[b])} (its new tokens are counted "
                             f"in seq_lens, their K/V already in the cache)")
        on_gpu = is_cupy_array(block_tables)
        xp = array_module(block_tables)
        if warps is None:
            warps = warps_for(int(q_lens.max(initial=0)))
        elif check_int(warps, "warps") not in (1, 2, 4, 8):
            raise ValueError(f"warps: expected 1, 2, 4 or 8, got {warps!r}")
        work = work_list(indptr, lens.astype(np.int64), 16 * warps, causal)
        pages_used = -(-lens.astype(np.int64) // page_size)
        used = tables[np.arange(tables.shape[1])[None, :] < pages_used[:, None]]
        options = (f"-DHEAD_DIM={head_dim}", f"-DELEM={elem}", f"-DWARPS={warps}",
                   f"-DKV_TILE={KV_TILE}", f"-DKV_QUANT={fmt.kernel_id if fmt else 0}",
                   f"-DCACHE_T={'unsigned char' if fmt else elem}",
                   f"-DPER_TOKEN_SCALES={int(fmt is not None and scale_scheme == 'per_token')}")
        kern = load_kernel("prefill_tc", "prefill_tc", options)
        smem = shared_bytes(head_dim, warps)
        allow_shared_memory(kern, smem)
        self.__dict__.update(
            planned=True, on_gpu=on_gpu, xp=xp, batch=batch, num_heads=num_heads,
            num_kv_heads=num_kv_heads, head_dim=head_dim, page_size=page_size,
            dtype=array_dtype, causal=bool(causal), total_q=int(indptr[-1]), warps=warps,
            kv_format=fmt, scale_scheme=scale_scheme if fmt else None,
            _no_scale=xp.ones(1, dtype=np.float32),
            max_page=int(used.max(initial=-1)), shared_mem=smem, kernel=kern,
            kernel_name=f"prefill_tc (WMMA, {16 * warps} query rows per block)",
            grid=(int(work.shape[0]), num_heads), block=(32 * warps,),
            _indexes=tuple(xp.asarray(a) for a in (indptr.astype(np.int32), tables, lens, work)),
            _checked=False)
        return self

    def _check_run(self, q, k_cache, v_cache):
        if not self.planned:
            raise RuntimeError("run: call plan(...) first")
        for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
            check_array(x, name, ndim=3 if name == "q" else 4, dtypes=None)
            if is_cupy_array(x) != self.on_gpu:
                raise TypeError(f"{name}: expected a {'CuPy' if self.on_gpu else 'NumPy'} "
                                f"array (the plan's tables live there), got another kind")
            if name != "q" and self.kv_format is not None:
                if x.dtype != self.kv_format.storage:
                    raise TypeError(f"{name}: expected dtype {self.kv_format.storage} (the codes "
                                    f"of {self.kv_format.name}, as planned), got {x.dtype}")
            elif not _accepts(x.dtype, self.dtype, self.on_gpu):
                raise TypeError(f"{name}: expected dtype {self.dtype} (as planned), got {x.dtype}")
        want_q = (self.total_q, self.num_heads, self.head_dim)
        if tuple(q.shape) != want_q:
            raise ValueError(f"q: expected shape {want_q} (total_q, num_heads, head_dim as "
                             f"planned), got {tuple(q.shape)}")
        want_cache = (self.page_size, self.num_kv_heads, self.head_dim)
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            if tuple(cache.shape[1:]) != want_cache:
                raise ValueError(f"{name}: expected [num_pages, {', '.join(map(str, want_cache))}]"
                                 f" as planned, got {tuple(cache.shape)}")
            if cache.shape[0] <= self.max_page:
                raise ValueError(f"{name}: the plan reads page {self.max_page} but the cache has "
                                 f"{cache.shape[0]} pages")

    def _check_scales(self, k_cache, k_scale, v_scale):
        """The scale arrays of a compressed cache (quant.check_run_scales), or the dummy the
        kernel takes for an uncompressed one."""
        check_run_scales(self.kv_format, self.scale_scheme, k_cache.shape, k_scale, v_scale,
                         self.on_gpu, self._seen_scales)
        if self.kv_format is None:
            return self._no_scale, self._no_scale
        return k_scale, v_scale

    def run(self, q, k_cache, v_cache, out=None, scale=None, k_scale=None, v_scale=None):
        """Attention of the planned batch over this layer's cache; returns `out`.
        `k_scale`, `v_scale`: the scales of a compressed cache (see the module docstring)."""
        self._check_run(q, k_cache, v_cache)
        k_scale, v_scale = self._check_scales(k_cache, k_scale, v_scale)
        scale = resolve_scale(scale, self.head_dim)
        check_out(out, q=q, k_cache=k_cache, v_cache=v_cache)
        out = prepare_out(out, tuple(q.shape), q.dtype, self.xp)
        if self.grid[0] == 0:
            return out
        q, k_cache, v_cache = (aligned16(a, self.xp) for a in (q, k_cache, v_cache))
        if self.kv_format is not None:   # the kernel takes the codes as bytes
            k_cache, v_cache = k_cache.view(np.uint8), v_cache.view(np.uint8)
        indptr, tables, lens, work = self._indexes
        args = (q, k_cache, v_cache, k_scale, v_scale, indptr, tables, lens, work, out,
                np.int32(self.num_heads),
                np.int32(self.num_kv_heads), np.int32(self.page_size),
                np.int32(tables.shape[1]), np.int32(self.causal), np.float32(scale * LOG2E))
        self.kernel(self.grid, self.block, args, shared_mem=self.shared_mem)
        if not self._checked:   # the first launch checked the arguments; later ones skip it
            self.kernel, self._checked = fast_path(self.kernel, self.on_gpu), True
        return out
