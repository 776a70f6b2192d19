"""Host-side planning of a decode step: which kernel, how the sequences are cut, launch shapes.

Two kernels compute decode attention:
- "simt" (`kernels/decode.cu`): CUDA cores; the threads of a token share one K row, each
  block handles up to 8 query heads of one KV head. fp32, fp16 and bf16.
- "tensor_core": the query heads of a GQA group are the rows of a matrix, and each K/V tile
  is multiplied on tensor cores for the whole group. fp16 and bf16 (no fp32 inputs; tf32
  would cost fp32's accuracy). Three sources of that algorithm (TC_IMPL, planner_impl):
  `kernels/decode_mma.cu` (PTX mma.sync, the softmax in registers, the heads as the rows of
  the tile), `kernels/decode_mma_rows.cu` (the same transposed: 16 tokens as the rows, the
  heads as the columns, for groups up to 16) and lesson 09's `kernels/decode_tc.cu` (WMMA).
  Block sizes: decode_tc_sizes.py; the measured shapes: decode_tc_shapes.py; the SIMT
  kernel's partitions: decode_simt_plan.py (its names re-exported here).

`choose_kernel` (decode_choice.py, re-exported) picks one (the choice is measured, see
benchmarks/NOTES.md); both split long sequences into partitions (split-K) so that few
sequences still fill the GPU; the PTX kernels also take balanced ranges across sequences
(decode_work.py). Everything here is plain NumPy on the host: `BatchDecodeWrapper.plan`
calls it once per decode step.
"""
from __future__ import annotations

from typing import NamedTuple

from .attention_common import KV_C_TYPES, MAX_GRID_YZ
from .decode_choice import (COMPRESSED_SIMT_MAX_GROUP, HEAD_DIM_MAX,  # noqa: F401 - re-exported
                            KERNELS, MHA_KERNEL, TC_AUTO_MAX_HEAD_DIM, choose_kernel,
                            supported_head_dim)
from .decode_simt_plan import (BLOCKS_PER_SM, MIN_PART_LEN, PART_LEN,  # noqa: F401 - re-exported
                               SIMT_GROUPS, check_token_range, choose_partitions, cut_longest,
                               group_kernel_size, simt_shared_bytes)
from .decode_tc_sizes import TC_SMEM_PER_SM, mma_o_fits, mma_shared_bytes, tc_shared_bytes
from .decode_tc_shapes import (MMA_SHAPES, ROWS_SHAPES, ROWS_SHORT_ITEMS,
                               ROWS_SHORT_ITEMS_SHAPE, TC_SHAPES)
from .validate import check_block_tables

# Compressed pages on the SIMT kernel (decode_choice.COMPRESSED_SIMT_MAX_GROUP) run in
# partitions of this many tokens when 4+ query heads share a block (the SIMT kernel's
# per-block work, q's preparation and the groups' merge, weighs more there; D64 GQA 32/8,
# H200, round r7: 1024 0.115 ms fp8 static against 0.121 with PART_LEN's 512).
COMPRESSED_SIMT_PART_LEN = 1024
# ... launched as a work list of partitions, longest first (tc_work_list; kernels/decode.cu
# -DWORK_LIST): the sequences' short last partitions fill the last wave's gaps (r7: 0-2%).
COMPRESSED_SIMT_LONGEST_FIRST = True


def check_decode_tables(block_tables, seq_lens, page_size: int):
    """(tables, lens) as NumPy, once block_tables (an int32 [batch, pages] array) and seq_lens
    pass `BatchDecodeWrapper.plan`'s checks of their values: a valid page id wherever a
    sequence reads one, every sequence at least one token and within its row. (pack_tables
    runs them too, on rank 0, before a tensor-parallel step's tables are sent.)"""
    return check_block_tables(block_tables, seq_lens, num_pages=None, page_size=page_size,
                              batch=int(block_tables.shape[0]), min_len=1,
                              batch_of="block_tables row")


# ---- the SIMT kernel (its partitions and sizes: decode_simt_plan.py) ----------------------
def simt_options(dtype: str, head_dim: int, gmax: int) -> tuple[str, ...]:
    return (*_type_options(dtype), f"-DHEAD_DIM={head_dim}", f"-DGMAX={gmax}")


# ---- the tensor-core kernel ----------------------------------------------------------------
# A block is TC_WARPS warps; each takes 16 query heads (a row tile) and TW = TILE_T * row_tiles
# / warps tokens of every K/V tile; STAGES tiles are in flight. The defaults are the measured
# choice per head size and cache format (tc_shape; benchmarks/NOTES.md, 2026-12-02).
TC_WARPS = 4                # warps per block, unless tc_shape says otherwise
TC_MAX_ROW_TILES = 4        # a block multiplies at most 64 query heads (one row tile per warp)
TC_TILE_TOKENS = 64         # tokens per K/V tile: 32 KB of K and V at head_dim 128
TC_STAGES = 2               # K/V tiles in flight per block
TC_S_CHAINS = 1             # independent accumulators for S = Q K^T
TC_BLOCKS_PER_SM = 4        # automatic splitting aims for at least this many blocks per SM
TC_AUTO_MAX_PARTS = 64      # ... but cuts no sequence in more (the merge reads every part)
TC_PART_LENS = (4096, 2048, 1024, 512, 256, 128)   # automatic partition lengths, longest first
TC_WAVES = 1                # partitions sized to fill this many waves of resident blocks, when
                            # the sequences allow (at most that many blocks without a split)
KV_QUANT_IDS = {None: 0, "int8": 1, "fp8_e4m3": 2}   # -DKV_QUANT
# Two sources of the tensor-core algorithm: "wmma" (kernels/decode_tc.cu, lesson 09's: S and P
# through shared memory, WMMA's layout being unspecified) and "mma" (kernels/decode_mma.cu:
# PTX mma.sync with the softmax in registers; fp16/bf16 pages) and "rows"
# (kernels/decode_mma_rows.cu: the same on S^T = K Q^T, 16 tokens as the rows of the tile and
# the group's heads as the n = 8 columns: groups up to 16, larger ones take "mma").
# TC_IMPL: what plans take ("auto": planner_impl's measured choice per shape).
TC_IMPLS = ("wmma", "mma", "rows")
ROWS_MAX_GROUP = 16
TC_IMPL = "auto"
# Where "auto" takes "rows": (compressed pages, head sizes, largest group); the rest "mma".
# Measured (H200, round r7, 2026-12-02, benchmarks/NOTES.md "Tensor-core decode v6"; both
# kernels in their best scheme, ms): D64 GQA 32/8 fp16 0.161 (decode_mma 0.163), GQA 64/8
# 0.166 (0.169), page 64 0.166 (0.169), head_dim 256 0.305 (0.312), 1 x 32k 0.050 (0.052);
# codes (round s4c, NOTES.md "Compressed GQA on tensor cores (session 4)") static fp8 0.098 /
# int8 0.100 (decode_mma 0.098 / 0.104), per-token fp8 0.110 / int8 0.116, 8 x 32k fp8 0.147
# (r7: 0.174 against 0.194). MQA 16/1 stays on decode_mma (r5: 0.042 against 0.039). Head sizes
# 80 / 96 (session 6, NOTES.md "Head sizes 80 and 96 (session 6)"): 0.128 / 0.142 (decode_mma
# 0.130 / 0.145); copying through L1 (COPY_L1_AUTO, session 7) 0.122 / 0.140 in the bench.
ROWS_AUTO: list[tuple[bool, tuple[int, ...], int]] = [(True, (128,), 8),
                                                     (False, (80, 96, 128, 256), 8)]
# The work scheme rows over codes with static scales take (None: decode_work's rule, balanced
# ranges past one wave). r7 and s4a measured them on items (0.127 against 0.147 balanced):
# that balanced plan was 50 ranges x 8 KV heads for 396 resident slots, a 4-block second wave;
# at 49 ranges (s4c) balanced 0.098 against items 0.105.
ROWS_STATIC_CODES_SCHEME: str | None = None
# decode_mma_rows.cu over codes with up to QK_MMA8_MAX_GROUP heads per KV head: S on 8-bit
# tensor cores straight from the K codes, q split in two codes (-DQK_MMA8, kernels/
# decode_mma_ops.cuh), and the head pairs' layout (-DHEAD_PAIRS: head h in column 2h of S^T,
# one softmax column per lane; QK_MMA8 implies it). The cache formats (KV_QUANT ids) plans
# take each for when not told. Measured (H200, rounds s5b-s5b3, benchmarks/NOTES.md
# "Compressed GQA: 8-bit mma for S (session 5)"; D64 GQA 32/8, ms, static / per-token scales,
# s5b2): int8 pairs 0.094 / 0.104, QK_MMA8 0.094 / 0.103, neither 0.099 / 0.115; fp8 pairs
# 0.093 / 0.100, QK_MMA8 0.114 / 0.131 (no fp8 mma.sync on sm_90: emulated), neither 0.098 /
# 0.110. So the pairs' layout for both formats, QK_MMA8 for neither (within 0-2% of its
# layout alone for int8 in three rounds: the spread of repeated rows).
QK_MMA8_MAX_GROUP = 4
QK_MMA8_AUTO: frozenset[int] = frozenset()
HEAD_PAIRS_AUTO: frozenset[int] = frozenset({KV_QUANT_IDS["int8"], KV_QUANT_IDS["fp8_e4m3"]})
# Copies through L1 (-DCOPY_L1, kernels/common.cuh) in the planner's rows shape over 16-bit
# pages whose rows are not whole 128-byte lines (head_dim 80, 96, 112). Measured (H200,
# benchmarks/NOTES.md "Lines and fused KV heads (session 7)", D64 GQA 32/8, ms, .cg / .ca):
# head_dim 96 0.146 / 0.139, 80 0.132 / 0.123; L2 sectors at 96: 20.3 M / 14.5 M (the data:
# 14.4 M). Not elsewhere: whole lines lose (128: 0.160 / 0.172), and shapes with more shared
# memory per SM leave L1 too little (80, rows T64 S3: 0.133 / 0.164).
COPY_L1_AUTO = True
# The grid as (row blocks, work) (-DHEADS_ON_X, decode_tc_sizes.cuh): blocks launched one after
# another take the same range for different KV heads, so they start together and read the same
# pages at the same time. Where plans take it: the rows kernel over codes. Measured (H200, one
# process, NOTES.md "Read ceilings (session 9)"; ms, work on x / heads on x): D64 GQA 32/8
# fp8 0.095 / 0.091, int8 0.096 / 0.093, 8 x 32k fp8 on balanced ranges 0.150 / 0.142 (its
# plan's items not timed heads on x); fp16 0.159 / 0.160, 64/8 0.164 / 0.163-0.164 (level: not
# taken); the bench over fp8 0.091 (session 8: 0.093). The grid's y holds GRID_Y_MAX blocks: a
# plan with more keeps the work on x.
HEADS_ON_X_CODES = True
GRID_Y_MAX = MAX_GRID_YZ
# KV heads a rows block takes at once (-DKV_FUSE, decode_tc_sizes.cuh) per head size, over
# 16-bit pages: two heads of 96 dims are 384-byte rows, three whole lines. Measured (H200,
# D64 GQA 32/8, ms; NOTES.md "Lines and fused KV heads (session 7)" and "Small tiles of
# codes, fused pairs in the bench, bulk copies (session 8)"): fused on balanced ranges
# 0.134-0.137 against 0.139-0.140 unfused through L1 (session 7, one process), the bench
# 0.134 / 0.135 against 0.136 / 0.136 (session 8, four processes in turn), one process
# 0.134 against 0.139. (Session 7's fused plan ran 0.162 on one wave of long items, which
# decode_work's one-wave rule no longer takes.)
KV_FUSE_AUTO: dict[int, int] = {96: 2}
KV_FUSE_MAX_ROWS = 8   # query heads of the fused group (one n tile of S^T)


def kv_fuse(dtype: str, head_dim: int, group: int, num_kv_heads: int, kv_quant: int) -> int:
    """KV heads per block the planner fuses (1: none): KV_FUSE_AUTO's count where the rows
    kernel is the plan's choice, the pages hold 16-bit values, the fused group fits one n tile
    and the KV heads divide evenly."""
    fuse = KV_FUSE_AUTO.get(head_dim, 1)
    if (fuse == 1 or kv_quant or dtype not in ("float16", "bfloat16")
            or num_kv_heads % fuse or group * fuse > KV_FUSE_MAX_ROWS
            or planner_impl(group, head_dim, kv_quant) != "rows"):
        return 1
    return fuse


class TCConfig(NamedTuple):
    """One compiled tensor-core kernel and its launch: -D options, block size, shared memory
    (bytes, and the K/V region reused by the merge), rows per block, blocks per KV head,
    16-row tiles per block, tile tokens, stages, warps, warps per (row tile, token slice)."""
    options: tuple
    threads: int
    shared: int
    kv_bytes: int
    rows: int
    chunks: int
    row_tiles: int
    tile_t: int
    stages: int
    warps: int
    d_split: int
    min_blocks: int
    warp_pipe: bool
    impl: str = "wmma"
    blocks_per_sm: int | None = None   # the split rule's target (None: TC_BLOCKS_PER_SM)
    separate_merge: bool = False       # "mma": split sequences merged by a second launch
    scheme: str | None = None          # the work scheme it takes (None: decode_work's rule)
    kv_fuse: int = 1                   # KV heads per block ("rows", KV_FUSE)
    heads_on_x: bool = False           # grid (row blocks, work) (HEADS_ON_X)

    @property
    def source(self) -> str:
        """The kernel source (kernels/NAME.cu) and its function: paged_NAME."""
        return {"mma": "decode_mma", "rows": "decode_mma_rows"}.get(self.impl, "decode_tc")

    @property
    def function(self) -> str:
        return "paged_" + self.source


def short_items_config(dtype: str, head_dim: int, group: int, scheme: str,
                       item_tokens: int) -> TCConfig | None:
    """For a plan on the planner's own choice for uncompressed pages: the shape of one wave of
    short items (ROWS_SHORT_ITEMS_SHAPE) where that choice is decode_mma_rows.cu's fp16 shape
    at head_dim 128 and the plan's items are shorter than ROWS_SHORT_ITEMS tokens; else None
    (the choice stays)."""
    if (scheme != "items" or item_tokens >= ROWS_SHORT_ITEMS or head_dim > 128
            or tc_config(dtype, head_dim, group).impl != "rows"):
        return None
    return tc_config(dtype, head_dim, group, impl="rows", **ROWS_SHORT_ITEMS_SHAPE)


def planner_impl(group: int, head_dim: int, kv_quant: int) -> str:
    """The source a plan takes when not told: TC_IMPL, or with "auto" the measured choice
    (ROWS_AUTO: "rows" for those shapes, else "mma")."""
    if TC_IMPL != "auto":
        return TC_IMPL
    rows = any(quant == bool(kv_quant) and head_dim in dims and group <= max_group
               for quant, dims, max_group in ROWS_AUTO)
    return "rows" if rows else "mma"


def tc_shape(head_dim: int, row_tiles: int, kv_quant: int, group: int = 1,
             impl: str = "wmma") -> dict:
    """The tc_config keywords (warps, tile_t, stages, d_split, min_blocks, warp_pipe) the
    planner uses for this head size, group, cache format (kv_quant 0: fp16/bf16 pages) and
    kernel source. Groups of more than 16 heads (several row tiles) take the 4-warp shape."""
    shapes = {"mma": MMA_SHAPES, "rows": ROWS_SHAPES}.get(impl, TC_SHAPES)
    for max_dim, min_group, quant, kw in shapes:
        if (head_dim <= max_dim and (min_group <= group <= 16 or min_group == 1)
                and quant in (None, bool(kv_quant))):
            return {"min_blocks": 1, "warp_pipe": False, "merge_after_loop": False, **kw}
    return dict(warps=TC_WARPS, tile_t=TC_TILE_TOKENS, stages=TC_STAGES, d_split=1,
                min_blocks=1, warp_pipe=False, merge_after_loop=False)


def tc_rows(group: int, head_dim: int) -> tuple[int, int, int]:
    """(rows_per_block, row_chunks, row_tiles): query heads each block takes as the rows of
    Q, blocks per KV head, and 16-row tiles per block (1, 2 or 4: the warps split into
    row tiles x token slices). A group of more than 64 heads is split evenly over blocks."""
    chunks = -(-group // (16 * TC_MAX_ROW_TILES))
    rows = -(-group // chunks)
    tiles = -(-rows // 16)
    return rows, chunks, 1 << (tiles - 1).bit_length()


def tc_options(dtype: str, head_dim: int, row_tiles: int, tile_t: int, stages: int, *,
               warps: int = TC_WARPS, kv_quant: int = 0, per_token: bool = False,
               s_chains: int = TC_S_CHAINS, d_split: int = 1, min_blocks: int = 1,
               warp_pipe: bool = False):
    cache_t = "unsigned char" if kv_quant else KV_C_TYPES[dtype]
    return (*_type_options(dtype), f"-DHEAD_DIM={head_dim}", f"-DROW_TILES={row_tiles}",
            f"-DTILE_T={tile_t}", f"-DSTAGES={stages}", f"-DTC_WARPS={warps}",
            f"-DS_CHAINS={s_chains}", f"-DD_SPLIT={d_split}", f"-DTC_MIN_BLOCKS={min_blocks}",
            f"-DWARP_PIPE={int(bool(warp_pipe))}",
            f"-DKV_QUANT={kv_quant}", f"-DCACHE_T={cache_t}",
            f"-DPER_TOKEN_SCALES={int(bool(per_token))}")


def tc_config(dtype: str, head_dim: int, group: int, kv_quant: int = 0, per_token: bool = False,
              *, warps: int | None = None, tile_t: int | None = None,
              stages: int | None = None, s_chains: int | None = None,
              d_split: int | None = None, min_blocks: int | None = None,
              warp_pipe: bool | None = None, impl: str | None = None,
              swizzle: bool = True, q_regs: bool | None = None,
              fp8_bits: bool = False, separate_merge: bool = False,
              merge_after_loop: bool | None = None, qk_mma8: bool | None = None,
              head_pairs: bool | None = None, copy_l1: bool | None = None,
              kv_fuse: int = 1, heads_on_x: bool | None = None) -> TCConfig:
    """The tensor-core kernel a plan launches. warps/tile_t/stages/d_split None: the
    planner's choice (tc_shape), with stages dropped (down to 2) until two blocks fit on an
    SM. d_split: warps that share a (row tile, token slice), each accumulating 1/d_split of
    O's columns (more warps per SM for the same registers); min_blocks: the blocks per SM
    the compiler must leave registers for (__launch_bounds__); warp_pipe: each warp copies
    and waits for its own tokens (one row tile, d_split 1 only; else ignored). impl: "mma",
    "rows" (groups up to ROWS_MAX_GROUP, else "mma") or "wmma" (None: planner_impl;
    compressed pages at a head_dim that is not a multiple of 128 always "wmma"); swizzle and
    q_regs (Q's fragments in registers; None: up to head_dim 128) and fp8_bits (e4m3 codes
    converted by moving bits instead of the conversion instruction) are the PTX kernels';
    separate_merge (split sequences merged by a second launch instead of their last block)
    is the "mma" kernel's; merge_after_loop (their last block merges after its tile loop,
    every load in flight at once; None: the planner's shape's) the PTX kernels'. qk_mma8 and head_pairs
    ("rows" over codes, groups up to QK_MMA8_MAX_GROUP): S on 8-bit tensor cores from the K
    codes, the head pairs' layout (implied by qk_mma8); None: where QK_MMA8_AUTO /
    HEAD_PAIRS_AUTO have the format. copy_l1: K/V copies through L1 (cp.async.ca); None:
    COPY_L1_AUTO's rule (the planner's rows shape over 16-bit rows that are not whole lines).
    kv_fuse: KV heads per block ("rows" over 16-bit pages; head_dim and group are each
    head's, the kernel's fused head kv_fuse times both). heads_on_x: the grid as (row blocks,
    work), the PTX kernels' (None: HEADS_ON_X_CODES's rule, the rows kernel over codes)."""
    if impl not in (None, *TC_IMPLS):
        raise ValueError(f"impl: expected one of {TC_IMPLS} or None, got {impl!r}")
    if kv_fuse != 1:
        if (impl not in (None, "rows") or kv_quant or head_dim % 8
                or group * kv_fuse > ROWS_MAX_GROUP):
            raise ValueError(f"kv_fuse: expected 16-bit pages on the 'rows' kernel, head_dim a "
                             f"multiple of 8 and up to {ROWS_MAX_GROUP} fused heads' rows, got "
                             f"impl {impl!r}, kv_quant {kv_quant}, head_dim {head_dim}, "
                             f"group {group} x {kv_fuse}")
        head_dim, group = head_dim * kv_fuse, group * kv_fuse   # the fused head, as the kernel
    impl = impl or ("rows" if kv_fuse != 1 else planner_impl(group, head_dim, kv_quant))
    if impl == "rows" and group > ROWS_MAX_GROUP:
        impl = "mma"
    if kv_quant and head_dim % 128:   # decode_mma(_rows).cu read codes at head_dim 128 and 256
        impl = "wmma"
    rows, chunks, row_tiles = tc_rows(group, head_dim)
    auto = warps is None and tile_t is None and stages is None and d_split is None
    if auto:
        kw = tc_shape(head_dim, row_tiles, kv_quant, group, impl)
        warps, tile_t, stages, d_split = kw["warps"], kw["tile_t"], kw["stages"], kw["d_split"]
        min_blocks = kw["min_blocks"] if min_blocks is None else min_blocks
        warp_pipe = kw["warp_pipe"] if warp_pipe is None else warp_pipe
        merge_after_loop = (kw["merge_after_loop"] if merge_after_loop is None
                            else merge_after_loop)
    blocks_per_sm = kw.get("blocks_per_sm") if auto else None
    warps, tile_t = warps or TC_WARPS, tile_t or TC_TILE_TOKENS
    stages, d_split = stages or TC_STAGES, d_split or 1
    min_blocks = min_blocks or 1
    # the warps of a D_SPLIT group share O's 16-column tiles (decode_mma.cu over codes: its
    # 128-column passes over V)
    cols = head_dim // (128 if impl != "wmma" and kv_quant else 16)
    if cols % d_split:   # (head_dim 80, 112: 5 and 7 column tiles)
        per_slice = warps // d_split
        d_split = max(d for d in range(1, d_split + 1) if cols % d == 0)
        warps = per_slice * d_split
    per = row_tiles * d_split
    warps = -(-warps // per) * per                  # warps = d_split x row tiles x slices
    unit = 16 * warps // per                        # every warp takes a multiple of 16 tokens
    tile_t = -(-tile_t // unit) * unit
    warp_pipe = bool(warp_pipe) and row_tiles == 1 and d_split == 1
    pairs = _pairs_options(impl, kv_quant, rows, qk_mma8, head_pairs)
    head_tiles = -(-rows // 8)   # decode_mma_rows.cu's n tiles of 8 heads
    # rows of a warp's O (decode_mma_rows.cu's WARP_O_ROWS: its heads; decode_mma.cu: 16)
    o_rows = 16 if impl != "rows" else 4 if pairs else 8 * head_tiles
    while impl != "wmma" and not mma_o_fits(row_tiles, head_dim, tile_t, warps=warps,
                                           d_split=d_split, swizzle=swizzle,
                                           kv_quant=kv_quant, warp_pipe=warp_pipe,
                                           o_rows=o_rows):
        tile_t += unit   # (the PTX kernels put the warps' O in a stage buffer)

    def size(stages):
        if impl != "wmma":
            return mma_shared_bytes(row_tiles, head_dim, tile_t, stages, warps=warps,
                                    d_split=d_split, swizzle=swizzle, kv_quant=kv_quant,
                                    per_token=per_token, warp_pipe=warp_pipe,
                                    q_rows=4 if pairs else None)
        return tc_shared_bytes(row_tiles, head_dim, tile_t, stages, warps=warps,
                               kv_quant=kv_quant, per_token=per_token, d_split=d_split)
    while auto and stages > 2 and size(stages)[0] + 1024 > TC_SMEM_PER_SM // 2:
        stages -= 1
    shared, kv_bytes = size(stages)
    options = tc_options(dtype, head_dim, row_tiles, tile_t, stages, warps=warps,
                         kv_quant=kv_quant, per_token=per_token,
                         s_chains=s_chains or TC_S_CHAINS, d_split=d_split,
                         min_blocks=min_blocks, warp_pipe=warp_pipe)
    if impl != "wmma":
        options += (f"-DSWIZZLE={int(swizzle)}", f"-DFP8_BITS={int(fp8_bits)}",
                    f"-DSEPARATE_MERGE={int(impl == 'mma' and bool(separate_merge))}") + (
            ("-DMERGE_AFTER_LOOP=1",) if merge_after_loop else ()) + (
            () if q_regs is None else (f"-DQ_REGS={int(q_regs)}",))
    if impl == "rows":
        options += (f"-DHEAD_TILES={head_tiles}",)
    if kv_fuse != 1:
        options += (f"-DKV_FUSE={kv_fuse}",)
    if copy_l1 is None:
        copy_l1 = (COPY_L1_AUTO and auto and impl == "rows" and not kv_quant
                   and head_dim * 2 % 128 != 0)   # 2-byte elements: fp16 / bf16 pages
    options += pairs + (("-DCOPY_L1=1",) if copy_l1 else ())
    separate_merge = impl == "mma" and bool(separate_merge)
    if heads_on_x is None:
        heads_on_x = HEADS_ON_X_CODES and impl == "rows" and bool(kv_quant)
    elif heads_on_x and (impl == "wmma" or separate_merge):
        raise ValueError(f"heads_on_x: the PTX kernels merging in their last block, got impl "
                         f"{impl!r}, separate_merge {separate_merge}")
    options += ("-DHEADS_ON_X=1",) if heads_on_x else ()
    scheme = ROWS_STATIC_CODES_SCHEME if impl == "rows" and kv_quant and not per_token else None
    return TCConfig(options, 32 * warps, shared, kv_bytes, rows, chunks, row_tiles, tile_t,
                    stages, warps, d_split, min_blocks, warp_pipe, impl, blocks_per_sm,
                    separate_merge, scheme, kv_fuse, bool(heads_on_x))


def work_on_x(cfg: TCConfig) -> TCConfig:
    """cfg with the grid as (work, row blocks): for plans of more than GRID_Y_MAX blocks."""
    return cfg._replace(heads_on_x=False,
                        options=tuple(o for o in cfg.options if o != "-DHEADS_ON_X=1"))


def _pairs_options(impl: str, kv_quant: int, rows: int, qk_mma8: bool | None,
                   head_pairs: bool | None) -> tuple[str, ...]:
    """tc_config's -DQK_MMA8 / -DHEAD_PAIRS (the kernel's default: HEAD_PAIRS = QK_MMA8)."""
    takes = impl == "rows" and bool(kv_quant) and rows <= QK_MMA8_MAX_GROUP
    for name, value in (("qk_mma8", qk_mma8), ("head_pairs", head_pairs)):
        if value and not takes:
            raise ValueError(f"{name}: expected compressed pages (kv_quant 1 or 2) on the "
                             f"'rows' kernel with up to {QK_MMA8_MAX_GROUP} heads per KV head, "
                             f"got kv_quant {kv_quant}, impl {impl!r}, {rows} heads")
    if qk_mma8 and head_pairs is False:
        raise ValueError("head_pairs: qk_mma8 takes the head pairs' layout, got False")
    qk8 = qk_mma8 if qk_mma8 is not None else takes and kv_quant in QK_MMA8_AUTO
    pairs = head_pairs if head_pairs is not None else takes and kv_quant in HEAD_PAIRS_AUTO
    return ("-DQK_MMA8=1",) if qk8 else ("-DHEAD_PAIRS=1",) if pairs else ()


def _type_options(dtype: str) -> tuple[str, ...]:
    return (f"-DKV_T={KV_C_TYPES[dtype]}",) + (("-DKV_BF16",) if dtype == "bfloat16" else ())
