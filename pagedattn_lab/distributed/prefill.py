"""One rank's share of a tensor-parallel prefill step: `TPDecode`'s pattern with the course's
`BatchPrefillWrapper` (tensor cores; fp16 or bf16), queries packed `[total_q, H/R, D]`.

    tp = TPPrefill(num_heads, num_kv_heads, head_dim, page_size, "float16", max_batch,
                   max_pages)
    out = tp.step(q_local, k_shard, v_shard, tables, lens, qo_indptr)   # rank 0's tables

The broadcast buffer carries qo_indptr after the tables (still one broadcast per step); the
gathered output is `[total_q, num_heads, head_dim]` on every rank.
"""
from __future__ import annotations

from ..prefill_wrapper import BatchPrefillWrapper, element_type
from .decode import TPDecode
from .shard import pack_tables, unpack_tables


class TPPrefill(TPDecode):
    """Rank `dist.get_rank()`'s heads of a packed prefill step (see `TPDecode`)."""

    WRAPPER = BatchPrefillWrapper
    PREFILL = True

    def __init__(self, *args, num_splits=None, **kwargs):
        if num_splits is not None:   # TPDecode's keyword: this wrapper has no split-K
            raise TypeError(f"num_splits: BatchPrefillWrapper has no split-K partitions, so "
                            f"TPPrefill takes none; got {num_splits!r}")
        super().__init__(*args, **kwargs)

    @staticmethod
    def _dtype_of(dtype) -> str:
        """fp16 or bf16 (the prefill wrapper's tensor cores), or its DtypeError."""
        return element_type(dtype)[1].name

    def share_tables(self, block_tables=None, seq_lens=None, qo_indptr=None):
        """Rank 0 gives (block_tables, seq_lens, qo_indptr); every rank returns them."""
        return self._timed("broadcast", self._broadcast, block_tables, seq_lens, qo_indptr)

    def _pack(self, block_tables, seq_lens, qo_indptr=None):
        if qo_indptr is None:   # (pack_tables would make a decode step's smaller buffer)
            raise ValueError("qo_indptr: rank 0 gives a prefill step's qo_indptr [batch + 1] "
                             "with its block_tables and seq_lens; got None")
        return pack_tables(block_tables, seq_lens, self.max_batch, self.max_pages, qo_indptr,
                           page_size=self.page_size)

    def _unpack(self):
        return unpack_tables(self._buf, self.max_batch, self.max_pages)

    def _rows(self) -> int:
        return int(self._step_tables()[2][-1])   # qo_indptr's last offset: the packed queries

    def plan(self, block_tables, seq_lens, qo_indptr):
        h = self.heads
        return self._timed("plan", self.wrapper.plan, qo_indptr, block_tables, seq_lens,
                           h.q_stop - h.q_start, h.kv_stop - h.kv_start, self.head_dim,
                           self.page_size, self.dtype)

    def step(self, q_local, k_shard, v_shard, block_tables=None, seq_lens=None,
             qo_indptr=None, out=None):
        """A whole prefill step: tables shared, planned, attended, gathered; refused on any
        rank, raised on every rank (see `TPDecode`)."""
        shared = self.share_tables(block_tables, seq_lens, qo_indptr)
        return self._plan_attend_gather(shared, q_local, k_shard, v_shard, out)
