"""The engine's one door to the attention kernels: plan once per step, run in every layer.

A step's batch packs every scheduled request's new tokens one after another: `q_lens[i]`
new tokens of request i, which already has `kv_lens[i] - q_lens[i]` tokens cached. New
tokens are the last ones of their sequence (bottom-right causal), so one batch mixes
prompt chunks (q_len > 1), prompts whose prefix came from the prefix cache, and decodes
(q_len = 1). `StepAttention.plan` does all the host work once per step (index arrays, block
tables, the slot of every new token); `write_kv` and `run` are then called by each layer.

`run` calls the course's public kernels:
  - decodes go to `BatchDecodeWrapper` (the kernel `paged_attention_decode` picks), planned
    once per step here and run by every layer;
  - prefill chunks, in float16 with a head size the tensor-core kernel compiles for, go to
    `BatchPrefillWrapper`: packed queries (`qo_indptr`), bottom-right causal, planned once
    per step here and run by every layer;
  - other prefill chunks (float32, small heads) go to `paged_attention_prefill` with the
    chunk's queries placed at their positions in a zero-padded query of the sequence's full
    length, and only those rows read back: correct (each row is causal over the cached
    tokens), but the rows before the chunk are computed and thrown away.
`write_kv` scatters K/V rows to their slots with array indexing; the model's fused path
writes them in its RoPE kernel instead, through `slot_mapping` (every new token's slot on the
device, SKIP_SLOT for those already cached), except into a compressed cache.

A compressed cache (kv_dtype "int8" / "fp8_e4m3", quant.py) is written by the quantizing
cache-write kernel (`cache_write_quant.write_kv_quant`), and every new token, prefill chunks
included, is read through `BatchDecodeWrapper` over the codes: query token t of a sequence is a
decode over the sequence's first t + 1 tokens (same block table), which is exactly causal
attention. One kernel then reads codes for every head size and dtype (the packed prefill takes
fp16/bf16 and a few head sizes); a prompt's tokens each re-read their prefix, which a teaching
engine can afford.
"""
from __future__ import annotations

import numpy as np

from ..attention_prefill import TILED_HEAD_DIMS, paged_attention_prefill
from ..cache_write_quant import write_kv_quant
from ..prefill_wrapper import HEAD_DIMS as PACKED_HEAD_DIMS
from ..prefill_wrapper import BatchPrefillWrapper
from ..quant import check_scheme, kv_dtype_name
from ..validate_scale import resolve_scale
from ..wrappers import BatchDecodeWrapper

SKIP_SLOT = -1   # a token whose K/V is already cached: nothing to write


def _padded_table(tables: list[list[int]]) -> np.ndarray:
    width = max([len(t) for t in tables] + [1])
    out = np.full((len(tables), width), -1, dtype=np.int32)
    for row, table in enumerate(tables):
        out[row, :len(table)] = table
    return out


class StepAttention:
    """One step's attention metadata, shared by every layer of the model."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, page_size: int,
                 dtype, xp, packed_prefill: bool | None = None, kv_dtype: str | None = None,
                 scale_scheme: str = "per_token"):
        """packed_prefill: run prefill chunks through `BatchPrefillWrapper` (None: whenever
        the dtype is float16 and it compiles for head_dim). kv_dtype, scale_scheme: a
        compressed cache (see the module docstring)."""
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.page_size, self.dtype, self.xp = page_size, np.dtype(dtype), xp
        self.prefill_kernel = "tiled" if head_dim in TILED_HEAD_DIMS else "naive"
        can_pack = self.dtype == np.float16 and head_dim in PACKED_HEAD_DIMS
        if packed_prefill and not can_pack:
            raise ValueError(f"packed_prefill: the tensor-core prefill takes float16 and head_dim "
                             f"in {PACKED_HEAD_DIMS}; got {self.dtype} and {head_dim}")
        self.packed = can_pack if packed_prefill is None else bool(packed_prefill)
        self.wrapper = BatchPrefillWrapper() if self.packed else None
        self.decode = BatchDecodeWrapper()
        # The scale paged_attention_decode passes to its wrapper: the same float32 bits.
        self.scale = resolve_scale(None, head_dim)
        # checked here, not at the first step's plan (quant.KV_DTYPE_ALIASES: one spelling)
        self.kv_dtype = None if kv_dtype is None else kv_dtype_name(kv_dtype)
        self.scale_scheme = None if kv_dtype is None else check_scheme(scale_scheme)
        self.compressed = BatchDecodeWrapper() if kv_dtype is not None else None

    def plan(self, q_lens, kv_lens, block_tables: list[list[int]], slot_mapping) -> None:
        """q_lens, kv_lens: per request (kv_len counts the new tokens too); block_tables:
        each request's pages; slot_mapping: the cache slot of every new token (SKIP_SLOT:
        already cached, do not write)."""
        xp = self.xp
        q_lens = np.asarray(q_lens, np.int64)
        kv_lens = np.asarray(kv_lens, np.int64)
        starts = np.concatenate([[0], np.cumsum(q_lens)[:-1]]).astype(np.int64)
        self.total_q = int(q_lens.sum())
        slots = np.asarray(slot_mapping, np.int64)
        writes = np.flatnonzero(slots != SKIP_SLOT)
        self.write_all = writes.size == slots.size
        # One upload for the slot mapping and the rows to write (views of it).
        index = xp.asarray(np.concatenate([slots, writes, slots[writes]]))
        self.slot_mapping = index[:slots.size]
        self.write_rows = index[slots.size:slots.size + writes.size]
        self.write_slots = index[slots.size + writes.size:]
        if self.compressed is not None:
            self._plan_compressed(q_lens, kv_lens, block_tables)
            return

        decode = np.flatnonzero(q_lens == 1)
        self.num_decode = decode.size
        self.all_decode = decode.size == q_lens.size
        self.decode_rows = None if self.all_decode else xp.asarray(starts[decode])
        if decode.size:
            self.decode.plan(_padded_table([block_tables[i] for i in decode]),
                             kv_lens[decode].astype(np.int32), self.num_heads,
                             self.num_kv_heads, self.head_dim, self.page_size, self.dtype.name,
                             device="cpu" if xp is np else "gpu")

        prefill = np.flatnonzero(q_lens > 1)
        self.num_prefill = prefill.size
        if prefill.size and self.packed:
            indptr = np.concatenate([[0], np.cumsum(q_lens[prefill])]).astype(np.int32)
            self.prefill_rows = xp.asarray(np.concatenate(
                [np.arange(starts[i], starts[i] + q_lens[i]) for i in prefill]))
            self.wrapper.plan(indptr, xp.asarray(_padded_table([block_tables[i] for i in prefill])),
                              xp.asarray(kv_lens[prefill].astype(np.int32)), self.num_heads,
                              self.num_kv_heads, self.head_dim, self.page_size, self.dtype,
                              causal=True)
        elif prefill.size:
            self.max_len = int(kv_lens[prefill].max())
            rows, padded = [], []
            for j, i in enumerate(prefill):
                n, length = int(q_lens[i]), int(kv_lens[i])
                rows.append(np.arange(starts[i], starts[i] + n))
                padded.append(j * self.max_len + np.arange(length - n, length))
            self.prefill_rows = xp.asarray(np.concatenate(rows))
            self.prefill_padded = xp.asarray(np.concatenate(padded))
            self.prefill_tables = xp.asarray(_padded_table([block_tables[i] for i in prefill]))
            self.prefill_lens = xp.asarray(kv_lens[prefill].astype(np.int32))

    def _plan_compressed(self, q_lens, kv_lens, block_tables) -> None:
        """Every new token as a decode over its sequence's tokens up to itself."""
        request = np.repeat(np.arange(q_lens.size), q_lens)
        lens = np.concatenate([np.arange(kv - n + 1, kv + 1) for n, kv in zip(q_lens, kv_lens)])
        tables = _padded_table(block_tables)[request]
        self.compressed.plan(self.xp.asarray(tables), self.xp.asarray(lens.astype(np.int32)),
                             self.num_heads, self.num_kv_heads, self.head_dim, self.page_size,
                             self.dtype, kv_dtype=self.kv_dtype, scale_scheme=self.scale_scheme)

    def write_kv(self, k_cache, v_cache, k, v, k_scale=None, v_scale=None) -> None:
        """Store this step's new keys and values ([total_q, num_kv_heads, head_dim]) in
        their slots of one layer's cache (quantized, with their scales, when compressed)."""
        flat = (-1, self.num_kv_heads, self.head_dim)
        if not self.write_all:
            k, v = k[self.write_rows], v[self.write_rows]
        if self.compressed is not None:
            xp = self.xp
            write_kv_quant(xp.ascontiguousarray(k), xp.ascontiguousarray(v), k_cache, v_cache,
                           self.write_slots, self.kv_dtype, self.scale_scheme, k_scale, v_scale)
            return
        k_cache.reshape(flat)[self.write_slots] = k
        v_cache.reshape(flat)[self.write_slots] = v

    def run(self, q, k_cache, v_cache, k_scale=None, v_scale=None):
        """Attention of every new token over its sequence's cached tokens (itself included):
        q [total_q, num_heads, head_dim] -> out of the same shape. A batch of decodes only
        gets the decode plan's own buffer, which the next layer's run overwrites."""
        if self.compressed is not None:
            return self.compressed.run(q, k_cache, v_cache, out=self.xp.empty_like(q),
                                       k_scale=k_scale, v_scale=v_scale)
        if self.all_decode:
            return self.decode.run(q, k_cache, v_cache, scale=self.scale)
        out = self.xp.empty_like(q)
        if self.num_decode:
            out[self.decode_rows] = self.decode.run(
                self.xp.ascontiguousarray(q[self.decode_rows]), k_cache, v_cache,
                scale=self.scale)
        if self.num_prefill:
            out[self.prefill_rows] = self._run_prefill(q[self.prefill_rows], k_cache, v_cache)
        return out

    def _run_prefill(self, q_chunks, k_cache, v_cache):
        """The prefill chunks' attention (rows in packed order)."""
        if self.packed:
            return self.wrapper.run(self.xp.ascontiguousarray(q_chunks), k_cache, v_cache)
        shape = (self.num_prefill * self.max_len, self.num_heads, self.head_dim)
        padded = self.xp.zeros(shape, dtype=q_chunks.dtype)
        padded[self.prefill_padded] = q_chunks
        out = paged_attention_prefill(padded.reshape(self.num_prefill, self.max_len,
                                                     self.num_heads, self.head_dim),
                                      k_cache, v_cache, self.prefill_tables, self.prefill_lens,
                                      kernel=self.prefill_kernel)
        return out.reshape(shape)[self.prefill_padded]
