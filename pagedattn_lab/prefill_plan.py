"""The prefill wrapper's planning tables: the tensor-core kernels' compiled shapes (`Variant`),
the one each batch gets (`variant_for`, measured), a block's shared memory (`shared_bytes`) and
the query tiles' work lists (`work_list`), and the checks of a batch's tables
(`check_prefill_tables`) and int32 counts. `BatchPrefillWrapper.plan` (prefill_wrapper.py)
reads them; lesson 10 compares its own work list with `work_list`."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .validate import INT32_MAX, check_block_tables, check_offsets

HEAD_DIMS = (32, 64, 80, 96, 112, 128, 192, 256)
KV_TILE = 64        # keys per K/V tile of the default variants


@dataclass(frozen=True)
class Variant:
    """One compiled shape of a tensor-core prefill kernel: `mma` picks `prefill_mma.cu`
    (mma.sync, the fast one) over `prefill_tc.cu` (WMMA, the lesson's); `warps` per block,
    `row_frags` 16-row fragments per warp (a block's query tile is 16 * row_frags * warps
    packed rows), `kv_tile` keys per K/V tile, Q fragments kept in registers or reloaded from
    shared memory per K/V tile, `stages` K/V tiles in shared memory, and (WMMA only; the mma
    kernel unrolls fully) the unrolling of the two product loops (see the kernels' headers)."""
    warps: int
    row_frags: int
    kv_tile: int
    q_in_regs: bool = False
    unroll: int = 2
    stages: int = 2
    mma: bool = False

    @property
    def rows(self) -> int:
        return 16 * self.row_frags * self.warps

    @property
    def source(self) -> str:
        """The kernel's source file (without .cu) and its entry point's name."""
        return "prefill_mma" if self.mma else "prefill_tc"

    @property
    def name(self) -> str:
        return (f"{'m' if self.mma else ''}w{self.warps}r{self.row_frags}k{self.kv_tile}"
                f"{f'p{self.stages}' if self.stages != 2 else ''}"
                f"{'q' if self.q_in_regs else ''}{'' if self.mma else f'u{self.unroll}'}")

    @classmethod
    def parse(cls, name: str, arg: str = "variant") -> "Variant":
        """The variant a `name` describes: "w4r2k64p3qu2" is the WMMA kernel with 4 warps,
        2 row fragments, K/V tiles of 64 keys, 3 stages (the optional "p3"; 2 without), Q in
        registers (the optional "q"), unroll 2; "mw4r2k64" the mma kernel (no unroll)."""
        m = (re.fullmatch(r"(m?)w(\d)r(\d)k(\d+)(?:p(\d))?(q?)(?:u(\d))?", name)
             if isinstance(name, str) else None)
        if not m or bool(m[1]) == bool(m[7]):
            raise ValueError(f"{arg}: expected a name like 'w4r2k32u2' (WMMA: warps, row "
                             f"fragments, K/V tile, optional p<stages> and q, unroll) or "
                             f"'mw4r2k64' (mma.sync: the same without unroll), got {name!r}")
        v = cls(int(m[2]), int(m[3]), int(m[4]), m[6] == "q", int(m[7] or 2), int(m[5] or 2),
                m[1] == "m")
        if v.warps not in (1, 2, 4, 8) or v.row_frags not in (1, 2, 4) or \
                v.kv_tile not in (32, 64, 128) or v.unroll not in (1, 2, 4, 8) or \
                v.stages not in (2, 3, 4):
            raise ValueError(f"{arg}: {name!r} has a size the kernel does not take (warps "
                             f"1/2/4/8, row fragments 1/2/4, K/V tile 32/64/128, stages 2-4, "
                             f"unroll 1/2/4/8)")
        return v

    def options(self, head_dim: int) -> tuple[str, ...]:
        unroll = () if self.mma else (f"-DQK_UNROLL={self.unroll}",
                                      f"-DPV_UNROLL={self.unroll}")
        return (f"-DHEAD_DIM={head_dim}", f"-DWARPS={self.warps}",
                f"-DROW_FRAGS={self.row_frags}", f"-DKV_TILE={self.kv_tile}",
                f"-DSTAGES={self.stages}", f"-DQ_IN_REGS={int(self.q_in_regs)}") + unroll


# Decode-like sequences (q_len * group <= 16 packed rows): one warp, all query heads of a KV
# head in one tile, so each K/V tile read serves them all.
DECODE_VARIANT = Variant(1, 1, 32, mma=True)
DECODE_ROWS = 16


def variant_for(head_dim: int, max_rows: int) -> Variant:
    """The variant for the longer sequences of a batch (`max_rows`: their most rows; the
    decode-like ones go to a GQA-packed launch of their own). Everything runs on the mma.sync
    kernel (prefill_mma.cu; the WMMA kernel of lesson 10 is there by variant name). Measured
    on the H200 (benchmarks/NOTES.md, round r3 of 2026-12-02): long prompts and chunks, 4 warps
    of 32 rows, 64-key tiles (d128: 295-308 TFLOP/s; 32-key tiles and 8 warps 4-14% slower;
    d64 with Q in registers: 149, and 157 with 128-key tiles, which spill a register, so not
    taken); the packed decode launch on one warp of 16 rows (132 TFLOP/s on the mixed row
    against WMMA's 119). The other head sizes take the largest shape that compiles without
    spills (nvcc 13 -Xptxas -v, sm_90): Q in registers at d32, one row fragment above 128;
    short prompts (17-64 rows) two warps of 16."""
    if max_rows <= 64:
        return Variant(2, 1, 64, mma=True) if max_rows > 16 else DECODE_VARIANT
    if head_dim <= 32:
        return Variant(4, 2, 32, q_in_regs=True, mma=True)
    if head_dim <= 64:
        return Variant(4, 2, 64, q_in_regs=True, mma=True)
    if head_dim <= 128:
        return Variant(4, 2, 64, mma=True)
    return Variant(4, 1, 64, mma=True)


def shared_bytes(head_dim: int, variant: Variant, elem_size: int = 2) -> int:
    """Dynamic shared memory of one block; mirrors `carve` in prefill_tc.cu and the layout at
    the top of prefill_mma.cu (which keeps P in registers: no P scratch)."""
    ld = head_dim + 8
    kv = variant.stages * 2 * variant.kv_tile * ld * elem_size      # K and V per stage
    q = variant.rows * ld * elem_size
    p = 0 if variant.mma else variant.rows * (variant.kv_tile + 8) * elem_size
    slots = variant.stages * variant.kv_tile * 4
    return kv + q + p + slots


def work_list(indptr: np.ndarray, lens: np.ndarray, rows: int, causal: bool,
              pack: int = 1) -> np.ndarray:
    """int32 [n, 2]: (sequence, first packed row) of every query tile of `rows` packed rows
    (row = query * pack + head within the pack), the tiles with most keys first."""
    q_rows = np.diff(indptr) * pack
    tiles = -(-q_rows // rows)
    seq = np.repeat(np.arange(q_rows.size), tiles)
    first = (np.arange(seq.size) - np.repeat(np.cumsum(tiles) - tiles, tiles)) * rows
    last_query = (np.minimum(first + rows, q_rows[seq]) - 1) // pack
    keys = lens[seq] - q_rows[seq] // pack + last_query + 1 if causal else lens[seq]
    order = np.argsort(-keys, kind="stable")
    return np.stack([seq[order], first[order]], axis=1).astype(np.int32)


def check_prefill_tables(indptr: np.ndarray, block_tables, seq_lens, page_size: int):
    """(tables, lens, q_lens) as NumPy, once indptr (qo_indptr as a NumPy int64 array),
    block_tables and seq_lens pass `BatchPrefillWrapper.plan`'s checks of their values:
    offsets from 0 that never decrease, a valid page id wherever a sequence reads one, no
    sequence with more queries than tokens. (pack_tables runs them too, on rank 0, before a
    tensor-parallel step's tables are sent.)"""
    check_offsets(indptr, "qo_indptr")
    tables, lens = check_block_tables(block_tables, seq_lens, num_pages=None,
                                      page_size=page_size, batch=indptr.size - 1, min_len=0,
                                      batch_of="sequence in qo_indptr")
    q_lens = np.diff(indptr)
    too_many = np.flatnonzero(q_lens > lens)
    if too_many.size:
        b = int(too_many[0])
        raise ValueError(f"qo_indptr: sequence {b} has {int(q_lens[b])} queries but "
                         f"seq_lens[{b}] is {int(lens[b])} (its new tokens are counted "
                         f"in seq_lens, their K/V already in the cache)")
    return tables, lens, q_lens


def check_int32_ranges(indptr: np.ndarray, lens: np.ndarray, chosen: np.ndarray,
                       variant: Variant, pack: int) -> None:
    """Refuse the `chosen` sequences of one launch on `variant` where the kernels' int32 counts
    (kernels/prefill_tiles.cuh) wrap. Keys: a block's key loop steps k0 by kv_tile while
    k0 < kv_end (at most seq_len), and a tile's slot lookup runs `stages` tiles ahead, up to
    key k0 + (stages + 1) x kv_tile - 1 of the last tile (wrapped: a negative key passes
    `key < kv_end` and reads the block table before its row). Packed rows: a block's rows end
    at rho0 + rows (warp_keys), the last tile's at ceil(q_len x pack / rows) x rows."""
    seqs = np.flatnonzero(chosen)
    if not seqs.size:
        return
    tile, stages, rows = variant.kv_tile, variant.stages, variant.rows
    keys = lens[seqs].astype(np.int64)
    key_reach = (keys - 1) // tile * tile + (stages + 1) * tile - 1
    i = int(key_reach.argmax())
    if key_reach[i] > INT32_MAX:
        raise ValueError(f"seq_lens[{seqs[i]}]: {int(keys[i])} keys: the prefill kernel "
                         f"({variant.name}: tiles of {tile}, {stages} stages) counts keys in "
                         f"int32, and its look-ahead reaches key {int(key_reach[i])}, past "
                         f"2^31 - 1 (at most {(2**31 // tile - stages) * tile} keys)")
    packed = np.diff(indptr)[seqs].astype(np.int64) * pack
    row_reach = -(-packed // rows) * rows
    i = int(row_reach.argmax())
    if row_reach[i] > INT32_MAX:
        raise ValueError(f"qo_indptr: sequence {seqs[i]} has {int(packed[i] // pack)} queries "
                         f"({int(packed[i])} packed rows): the prefill kernel ({variant.name}) "
                         f"counts them in int32 in tiles of {rows}, and its last tile ends at "
                         f"row {int(row_reach[i])}, past 2^31 - 1 (at most "
                         f"{INT32_MAX // rows * rows} rows)")
