"""Shared memory and occupancy of the tensor-core decode kernels' blocks, as their layout
headers lay them out (kernels/decode_tc_layout.cuh for decode_tc.cu, decode_mma_layout.cuh for
decode_mma.cu): what `decode_plan.tc_config` allocates and how many blocks an SM holds, which
the split rule counts with."""
from __future__ import annotations

TC_SMEM_PER_SM = 227 * 1024   # what the blocks of one SM share (H100/H200: 228 KB, 1 KB each
                              # reserved by the system)


def tc_shared_bytes(row_tiles: int, head_dim: int, tile_t: int, stages: int,
                    elem_bytes: int = 2, *, warps: int = 4, kv_quant: int = 0,
                    per_token: bool = False, d_split: int = 1) -> tuple[int, int]:
    """(total, kv) shared-memory bytes of a tensor-core block: the layout of decode_tc.cu
    (staged K/V tiles; compressed: the codes, the converted tile and the per-token scales;
    then Q, each warp's S and P, the row-id tile, each warp's alpha, m and l, a flag). `kv`
    is the region before Q, reused at the end for O and for the merge weights."""
    rows, ld = 16 * row_tiles, head_dim + 8
    tw = tile_t * row_tiles * d_split // warps
    if kv_quant:
        kv = (stages * 2 * tile_t * head_dim + 2 * tile_t * ld * elem_bytes
              + (stages * 2 * tile_t * 4 if per_token else 0))
    else:
        kv = stages * 2 * tile_t * ld * elem_bytes
    total = (kv + rows * ld * elem_bytes + warps * 16 * (tw + 4) * 4
             + warps * 16 * (tw + 8) * elem_bytes + 16 * 16 * 4 + 3 * warps * 16 * 4 + 16)
    return total, kv


def mma_shared_bytes(row_tiles: int, head_dim: int, tile_t: int, stages: int,
                     elem_bytes: int = 2, *, warps: int = 4, d_split: int = 1,
                     swizzle: bool = True, kv_quant: int = 0, per_token: bool = False,
                     warp_pipe: bool = False, q_rows: int | None = None) -> tuple[int, int]:
    """(total, stage) shared-memory bytes of a block of kernels/decode_mma.cu (its layout:
    decode_mma_layout.cuh): the staged K/V tiles (rows of a multiple of 128 bytes swizzled,
    the others padded by 16 bytes; codes: one byte each, always swizzled) and per-token
    scales, then `stages` buffers of Q (one per live segment), the warps' m and l and a flag.
    `stage`: one copier's stage buffer (the block's, or with warp_pipe a warp's), where the
    warps' O and the merge's weights go at the end of a segment. q_rows: rows of a Q buffer
    (None: 16 per row tile; decode_mma_rows.cu's head pairs: 4)."""
    ldc = _mma_ldc(head_dim, elem_bytes, swizzle, kv_quant)
    kv = stages * 2 * tile_t * ldc + (stages * 2 * tile_t * 4 if kv_quant and per_token else 0)
    copiers = warps if warp_pipe else 1
    q_rows = 16 * row_tiles if q_rows is None else q_rows
    total = (-(-kv // 128) * 128 + stages * q_rows * (head_dim + 8) * elem_bytes
             + 2 * warps * 16 * 4 + 16)
    return total, 2 * (tile_t // copiers) * ldc


def mma_o_fits(row_tiles: int, head_dim: int, tile_t: int, elem_bytes: int = 2, *,
               warps: int = 4, d_split: int = 1, swizzle: bool = True, kv_quant: int = 0,
               warp_pipe: bool = False, o_rows: int = 16) -> bool:
    """Whether the warps' O (o_rows rows of head_dim floats per warp with a token slice: 16, a
    row tile; decode_mma_rows.cu: its heads' rows, WARP_O_ROWS) fit in one copier's stage
    buffer, where the PTX kernels put them at the end of a segment."""
    stage = mma_shared_bytes(row_tiles, head_dim, tile_t, 2, elem_bytes, warps=warps,
                             d_split=d_split, swizzle=swizzle, kv_quant=kv_quant,
                             warp_pipe=warp_pipe)[1]
    return (1 if warp_pipe else warps // d_split) * o_rows * head_dim * 4 <= stage


def _mma_ldc(head_dim, elem_bytes, swizzle, kv_quant):
    row = head_dim * (1 if kv_quant else elem_bytes)
    return row if (swizzle or kv_quant) and (row // 16) % 8 == 0 else row + 16


def tc_max_parts(rows: int, kv_bytes: int) -> int:
    """Most partitions per sequence: the merge keeps rows x parts weights (floats) in the
    K/V tiles' region (decode_tc.cu) or one stage buffer (decode_mma.cu): kv_bytes."""
    return kv_bytes // (4 * rows)


def tc_resident_blocks(cfg, head_dim: int) -> int:
    """Blocks of `cfg` an SM holds at once: by shared memory (1 KB each reserved), registers
    (ptxas, WMMA: up to ~200 per thread with one O tile per 16 columns, ~130 with half; mma:
    about 80 + head_dim / d_split; capped by the min_blocks of __launch_bounds__) and warps
    (64 per SM)."""
    if cfg.impl == "mma":   # ptxas (nvcc 13, sm_90): 210 at head_dim 128, 128 in pairs, 136 at 64
        regs = 80 + head_dim // cfg.d_split
    elif cfg.impl == "rows":   # decode_mma_rows.cu (ptxas, nvcc 13, segments): 139 at head_dim
        regs = max(150, 40 + head_dim // cfg.d_split)   # 128 (168 codes), 151 at 64 and 256 pairs
    else:
        regs = (200 if head_dim // 16 // cfg.d_split > 4 else 130) + (head_dim > 128) * 55
    regs = min(regs, 255, 65536 // (cfg.threads * cfg.min_blocks) // 8 * 8)
    return max(1, min(TC_SMEM_PER_SM // (cfg.shared + 1024), 65536 // (regs * cfg.threads),
                      64 // cfg.warps, 32))
