"""What the benchmark measures, and how its inputs are built (on the GPU, with CuPy).

Decode workloads read a paged fp16 cache; the data are random normal values (never zeros:
zeros hide unwritten outputs and can run faster than real data) and each sequence's pages
are scattered over the whole cache by a seeded permutation, as a long-running server's are.

"D64" is the reference workload of benchmarks/STARTING_POINT.md: 64 sequences with lengths drawn by
`np.random.default_rng(0).integers(512, 4097, 64)` (uniform in [512, 4096]), which sum to
149,713 tokens; 32 heads, head_dim 128, fp16, page size 16.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

D64_TOKENS = 149_713


def d64_lengths() -> tuple[int, ...]:
    lens = np.random.default_rng(0).integers(512, 4097, 64)
    assert int(lens.sum()) == D64_TOKENS, f"D64 lengths sum to {lens.sum()}, not {D64_TOKENS}"
    return tuple(int(n) for n in lens)


@dataclass(frozen=True)
class DecodeWorkload:
    name: str
    lens: tuple[int, ...]
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    page_size: int = 16
    dtype: str = "float16"

    @property
    def batch(self) -> int:
        return len(self.lens)

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def max_pages(self) -> int:
        return -(-max(self.lens) // self.page_size)

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def kv_bytes(self) -> int:
        return sum(self.lens) * 2 * self.num_kv_heads * self.head_dim * self.itemsize

    def bytes_moved(self) -> int:
        """The fewest bytes a decode kernel must move: every cached K and V element once (the
        tokens, not whole pages: the kernels read nothing past a sequence's length), q read,
        out written, the lengths and each sequence's page ids read (not the table's padding
        up to max_pages, which no kernel reads; bench.quant.bytes_read counts the same)."""
        qo = 2 * self.batch * self.num_heads * self.head_dim * self.itemsize
        pages = sum(-(-n // self.page_size) for n in self.lens)
        return self.kv_bytes() + qo + 4 * (pages + self.batch)

    def describe(self) -> str:
        return (f"{self.batch} seqs, {sum(self.lens)} tokens, {self.num_heads}/{self.num_kv_heads}"
                f" heads, d{self.head_dim}, page {self.page_size}, {self.dtype}")


@dataclass(frozen=True)
class PrefillWorkload:
    name: str
    batch: int = 4
    seq_len: int = 2048
    num_heads: int = 8
    head_dim: int = 64
    page_size: int = 16
    dtype: str = "float32"

    def flops(self) -> int:
        """Causal attention: QK^T and PV over the lower triangle, 2 flops per multiply-add."""
        pairs = self.seq_len * (self.seq_len + 1) // 2
        return 4 * self.batch * self.num_heads * pairs * self.head_dim

    def describe(self) -> str:
        return (f"{self.batch} x {self.seq_len} tokens, {self.num_heads} heads, d{self.head_dim}, "
                f"causal, {self.dtype}")


def decode_workloads(quick: bool = False) -> list[DecodeWorkload]:
    """The rows of STARTING_POINT.md's decode table (fp16, head_dim 128, page 16 unless named),
    GQA 64/8 at page 64, head_dim 80 and 96, and D64 at pages 64 and 128 (lesson 08's chart)."""
    d64 = d64_lengths()
    if quick:
        return [DecodeWorkload("D64", d64), DecodeWorkload("D64-gqa4", d64, num_kv_heads=8)]
    return [
        DecodeWorkload("D64", d64),
        DecodeWorkload("D64-p64", d64, page_size=64),
        DecodeWorkload("D64-p128", d64, page_size=128),
        DecodeWorkload("D64-gqa4", d64, num_kv_heads=8),
        DecodeWorkload("D64-gqa8", d64, num_heads=64, num_kv_heads=8),
        DecodeWorkload("D64-gqa8-p64", d64, num_heads=64, num_kv_heads=8, page_size=64),
        DecodeWorkload("D64-mqa16", d64, num_heads=16, num_kv_heads=1),
        DecodeWorkload("8x32k-gqa4", (32768,) * 8, num_kv_heads=8),
        DecodeWorkload("8x32k", (32768,) * 8),
        DecodeWorkload("1x32k-gqa4", (32768,), num_kv_heads=8),
        DecodeWorkload("256x128", (128,) * 256),
        DecodeWorkload("D64-d64", d64, head_dim=64),
        DecodeWorkload("D64-gqa4-d256", d64, num_kv_heads=8, head_dim=256),
        DecodeWorkload("D64-gqa4-d80", d64, num_kv_heads=8, head_dim=80),
        DecodeWorkload("D64-gqa4-d96", d64, num_kv_heads=8, head_dim=96),
    ]


def prefill_workloads(quick: bool = False) -> list[PrefillWorkload]:
    if quick:
        return [PrefillWorkload("prefill-small", seq_len=512)]
    return [PrefillWorkload("prefill")]


def scattered_tables(lens, page_size: int, seed: int = 0):
    """Block tables for sequences of `lens` over a cache with exactly the pages they need,
    each sequence's pages drawn from a random permutation. Returns (tables, num_pages)."""
    pages_per_seq = [-(-n // page_size) for n in lens]
    num_pages = sum(pages_per_seq)
    perm = np.random.default_rng(seed).permutation(num_pages).astype(np.int32)
    tables = np.full((len(lens), max(pages_per_seq)), -1, dtype=np.int32)
    start = 0
    for b, n in enumerate(pages_per_seq):
        tables[b, :n] = perm[start:start + n]
        start += n
    return tables, num_pages


def random_normal(cp, shape, dtype, seed: int):
    """Random normal values of `dtype` on the GPU, generated in slabs to bound the temporary."""
    out = cp.empty(shape, dtype=dtype)
    flat = out.reshape(-1)
    rs = cp.random.RandomState(seed)
    slab = 1 << 27
    for start in range(0, flat.size, slab):
        stop = min(flat.size, start + slab)
        flat[start:stop] = rs.standard_normal(stop - start, dtype=np.float32).astype(dtype)
    return out


def build_decode_inputs(cp, w: DecodeWorkload, seed: int = 0) -> dict:
    tables, num_pages = scattered_tables(w.lens, w.page_size, seed)
    shape = (num_pages, w.page_size, w.num_kv_heads, w.head_dim)
    return {
        "q": random_normal(cp, (w.batch, w.num_heads, w.head_dim), w.dtype, seed + 1),
        "k_cache": random_normal(cp, shape, w.dtype, seed + 2),
        "v_cache": random_normal(cp, shape, w.dtype, seed + 3),
        "block_tables": cp.asarray(tables),
        "seq_lens": cp.asarray(np.array(w.lens, dtype=np.int32)),
    }


def build_prefill_inputs(cp, w: PrefillWorkload, seed: int = 0) -> dict:
    lens = (w.seq_len,) * w.batch
    tables, num_pages = scattered_tables(lens, w.page_size, seed)
    shape = (num_pages, w.page_size, w.num_heads, w.head_dim)
    return {
        "q": random_normal(cp, (w.batch, w.seq_len, w.num_heads, w.head_dim), w.dtype, seed + 1),
        "k_cache": random_normal(cp, shape, w.dtype, seed + 2),
        "v_cache": random_normal(cp, shape, w.dtype, seed + 3),
        "block_tables": cp.asarray(tables),
        "seq_lens": cp.asarray(np.array(lens, dtype=np.int32)),
    }
