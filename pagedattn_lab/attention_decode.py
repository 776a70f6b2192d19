"""Decode attention on a paged KV cache: `paged_attention_decode` and its reusable `DecodePlan`.

One new query token per sequence attends to every cached token of that sequence
(`kernels/decode.cu`). Long sequences are cut into partitions of `part_len` tokens that
run as separate blocks (split-K, as in flash-decoding and vLLM's v2 kernel); a second,
small kernel merges the partitions. How many partitions is chosen from the lengths, the
number of KV heads and the number of multiprocessors (`choose_partitions`), or forced with
`num_splits`.
"""
from __future__ import annotations

import numpy as np

from .attention_common import (
    LOG2E,
    THREADS,
    aligned16,
    check_grid,
    fast_path,
    page_shift,
    prepare_out,
    same_place,
)
from .backend import array_module, to_numpy
from .kernels import kernel as load_kernel
from .validate import check_attention_inputs, check_int, check_out, resolve_scale

KERNEL_FILE = "decode"
GROUP_SIZES = (1, 2, 4, 8)   # query heads per block: one compiled kernel each
PART_LEN = 512               # tokens per partition when splitting (a multiple of page sizes)
MIN_PART_LEN = 128           # automatic splitting never goes below this
BLOCKS_PER_SM = 4            # automatic splitting aims for this many blocks per SM
CPU_SM_COUNT = 4             # what the CPU executor counts as "multiprocessors"


def supported_head_dims(dtype) -> tuple[int, ...]:
    """head_dim values the decode kernel handles: a K row must split into 16-byte chunks
    over a power-of-two number of threads, at most a warp."""
    per_chunk = 16 // np.dtype(dtype).itemsize
    return tuple(per_chunk * (1 << i) for i in range(6))


def group_kernel_size(group: int) -> int:
    """The smallest compiled group size (GMAX) that holds `group` query heads, or 8."""
    for g in GROUP_SIZES:
        if group <= g:
            return g
    return GROUP_SIZES[-1]


def sm_count(on_gpu: bool) -> int:
    if not on_gpu:
        return CPU_SM_COUNT
    import cupy  # noqa: PLC0415
    return int(cupy.cuda.Device().attributes["MultiProcessorCount"])


def choose_partitions(seq_lens, blocks_per_partition: int, num_sms: int,
                      num_splits: int | None = None) -> tuple[int, int]:
    """(part_len, max_parts): how to cut the sequences into partitions.

    num_splits=None (automatic): partitions of PART_LEN tokens; halved (down to
    MIN_PART_LEN) while the grid would have fewer than BLOCKS_PER_SM blocks per SM;
    no split at all when the longest sequence fits in one partition.
    num_splits=n: the longest sequence is cut into n partitions (1 = never split).
    max_parts is the number of partitions of the longest sequence.
    """
    lens = np.asarray(seq_lens, dtype=np.int64)
    max_len = int(lens.max())
    if num_splits is not None:
        part_len = -(-max_len // min(num_splits, max_len))
    else:
        part_len = PART_LEN
        while (part_len > MIN_PART_LEN and
               int((-(-lens // part_len)).sum()) * blocks_per_partition < BLOCKS_PER_SM * num_sms):
            part_len //= 2
        part_len = min(part_len, max_len)
    return part_len, -(-max_len // part_len)


class DecodePlan:
    """A validated decode call, ready to launch: `plan()` runs the kernels and returns `out`.

    Building the plan does all the checking (and one copy of the block table to the host
    for it); calling it only launches. The benchmark times `plan()`; `paged_attention_decode`
    is `DecodePlan(...)()`.
    """

    def __init__(self, q, k_cache, v_cache, block_tables, seq_lens, scale=None, *,
                 num_splits=None, out=None):
        shapes = check_attention_inputs(q, k_cache, v_cache, block_tables, seq_lens,
                                        mode="decode")
        check_out(out, q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables,
                  seq_lens=seq_lens)
        scale = resolve_scale(scale, shapes.head_dim)
        dtype = np.dtype(k_cache.dtype)
        if shapes.head_dim not in supported_head_dims(dtype):
            raise ValueError(f"q: head_dim {shapes.head_dim} is not supported by the decode kernel "
                             f"for {dtype.name} caches; supported: "
                             f"{', '.join(map(str, supported_head_dims(dtype)))}")
        if num_splits is not None:
            num_splits = check_int(num_splits, "num_splits", minimum=1)
        check_grid(shapes.batch, shapes.num_heads)
        xp = array_module(q)
        self.on_gpu = xp is not np
        self.xp, self.shapes, self.dtype = xp, shapes, dtype
        self.out = prepare_out(out, (shapes.batch, shapes.num_heads, shapes.head_dim), dtype, xp)
        self.q, self.k_cache, self.v_cache = (aligned16(a, xp) for a in (q, k_cache, v_cache))
        self.block_tables = same_place(block_tables, xp)
        self.seq_lens = same_place(seq_lens, xp)

        group = shapes.group_size
        self.gmax = group_kernel_size(group)
        chunks = -(-group // self.gmax)
        self.grid_y = shapes.num_kv_heads * chunks
        lens = to_numpy(seq_lens)
        self.part_len, self.max_parts = (
            choose_partitions(lens, self.grid_y, sm_count(self.on_gpu), num_splits)
            if shapes.batch else (1, 1))
        self.scale_log2 = np.float32(scale * LOG2E)
        if self.max_parts > 1:
            rows = (shapes.batch, shapes.num_heads, self.max_parts)
            self.part_out = xp.empty(rows + (shapes.head_dim,), dtype=np.float32)
            self.part_ml = xp.empty(rows + (2,), dtype=np.float32)
        else:   # never touched by the kernel
            self.part_out = self.part_ml = xp.zeros(4, dtype=np.float32)
        suffix = "f16" if dtype == np.float16 else "f32"
        nwarps = THREADS // 32
        self.shared_bytes = nwarps * self.gmax * (2 + shapes.head_dim) * 4
        s, i32 = shapes, np.int32
        self._launches = [[
            load_kernel(KERNEL_FILE, f"paged_decode_{suffix}_g{self.gmax}"),
            (self.max_parts, self.grid_y, s.batch), (THREADS,),
            (self.q, self.k_cache, self.v_cache, self.block_tables, self.seq_lens, self.out,
             self.part_out, self.part_ml, i32(s.num_heads), i32(s.num_kv_heads),
             i32(s.head_dim), i32(s.page_size), i32(page_shift(s.page_size)),
             i32(s.max_pages_per_seq), i32(self.part_len), i32(self.max_parts), self.scale_log2),
            self.shared_bytes]]
        if self.max_parts > 1:
            self._launches.append([
                load_kernel(KERNEL_FILE, f"paged_decode_merge_{suffix}"),
                (s.num_heads, s.batch), (max(32, min(THREADS, s.head_dim)),),
                (self.part_out, self.part_ml, self.seq_lens, self.out, i32(s.num_heads),
                 i32(s.head_dim), i32(self.part_len), i32(self.max_parts)), 0])
        if s.batch == 0:
            self._launches = []

    def __call__(self):
        for launch in self._launches:
            kern, grid, block, args, shared = launch
            kern(grid, block, args, shared_mem=shared)
            # The first launch checked every argument against the kernel's signature; the
            # arguments never change, so later calls go straight to cupy.RawKernel.
            launch[0] = fast_path(kern, self.on_gpu)
        return self.out


def paged_attention_decode(q, k_cache, v_cache, block_tables, seq_lens, scale=None, *,
                           num_splits=None, out=None):
    """Attention of one new query token per sequence over its paged KV cache.

    q [batch, num_heads, head_dim]; k_cache, v_cache [num_pages, page_size, num_kv_heads,
    head_dim] (float16 or float32, q of the same dtype); block_tables int32
    [batch, max_pages]; seq_lens int32 [batch], each >= 1. Returns [batch, num_heads,
    head_dim] in the cache's dtype, where the inputs live (NumPy: CPU executor; CuPy: GPU).

    num_splits: None picks the split-K partitioning automatically; an int cuts the longest
    sequence into that many partitions (1 = no split). out: optional preallocated result.
    """
    return DecodePlan(q, k_cache, v_cache, block_tables, seq_lens, scale,
                      num_splits=num_splits, out=out)()
