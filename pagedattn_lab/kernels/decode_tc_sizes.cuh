// The tensor-core decode kernels' (decode_tc.cu, decode_mma.cu) compile-time defaults and
// warp and tile sizes, the same for both. Include after common.cuh and kv_quant.cuh, before
// the kernel's layout header (which adds its own sizes and the shared-memory layout).
#ifndef DECODE_TC_SIZES_CUH
#define DECODE_TC_SIZES_CUH

#ifndef HEAD_DIM
#define HEAD_DIM 128
#endif
#ifndef TC_WARPS
#define TC_WARPS 4
#endif
#ifndef ROW_TILES
#define ROW_TILES 1
#endif
#ifndef TILE_T
#define TILE_T 64
#endif
#ifndef STAGES
#define STAGES 2
#endif
#ifndef D_SPLIT
#define D_SPLIT 1
#endif
#ifndef S_CHAINS
#define S_CHAINS 1
#endif
#ifndef TC_MIN_BLOCKS
#define TC_MIN_BLOCKS 1
#endif
#ifndef WARP_PIPE   // each warp copies and waits for its own tokens: no barrier in the loop
#define WARP_PIPE 0
#endif
#ifndef SEPARATE_MERGE   // split sequences merged by a second launch, not by their last block
#define SEPARATE_MERGE 0
#endif
#ifndef CACHE_T
#define CACHE_T KV_T
#endif
#define TC_THREADS (32 * TC_WARPS)

constexpr int NWARPS = TC_WARPS;
constexpr int CWARPS = NWARPS / D_SPLIT;      // warps with a (row tile, token slice) of their own
constexpr int ROWS = 16 * ROW_TILES;          // rows of Q (query heads, padded)
#ifndef QK_MMA8   // decode_mma_rows.cu over codes: S on 8-bit tensor cores (decode_mma_ops.cuh)
#define QK_MMA8 0
#endif
#ifndef HEAD_PAIRS   // decode_mma_rows.cu over codes, up to 4 heads: the head pairs' layout
#define HEAD_PAIRS QK_MMA8
#endif
constexpr int QROWS = HEAD_PAIRS ? 4 : ROWS;  // rows of a Q buffer (the pairs read heads 0-3)
constexpr int SLICES = CWARPS / ROW_TILES;    // token slices of a row tile
constexpr int TW = TILE_T / SLICES;           // tokens of a tile per warp
constexpr int D_TILES = HEAD_DIM / 16;        // k steps of S = Q K^T
constexpr int ROW_BYTES = HEAD_DIM * (int)sizeof(CACHE_T);   // one token's K (or V) row
constexpr int CHUNKS = ROW_BYTES / 16;        // 16-byte copies per K or V row
constexpr int CHUNK_ELEMS = 16 / (int)sizeof(CACHE_T);
static_assert(NWARPS % D_SPLIT == 0 && CWARPS % ROW_TILES == 0 && D_TILES % D_SPLIT == 0,
              "D_SPLIT must divide TC_WARPS and HEAD_DIM / 16; ROW_TILES, TC_WARPS / D_SPLIT");
static_assert(HEAD_DIM % 16 == 0 && TW % 16 == 0 && TILE_T == TW * SLICES && STAGES >= 2,
              "bad tile sizes");
static_assert(S_CHAINS == 1 || S_CHAINS == 2, "S_CHAINS is 1 or 2");

// KV_FUSE > 1 (decode_mma_rows.cu over 16-bit pages): a block takes KV_FUSE adjacent KV heads
// as one of HEAD_DIM = KV_FUSE x QD dims, whose rows are whole 128-byte lines where each
// head's are not (head_dim 96: 192 bytes; two heads 384, three lines). The K/V addressing is
// that of num_kv_heads / KV_FUSE heads of HEAD_DIM; query head r of the block (the group of
// fused head r / (nh / KV_FUSE)) is its QD dims at that place, zeros elsewhere, and keeps only
// those dims of O (benchmarks/NOTES.md "Lines and fused KV heads (session 7)").
#ifndef KV_FUSE
#define KV_FUSE 1
#endif
constexpr int QD = HEAD_DIM / KV_FUSE;         // the dims of a query, of an output row
static_assert(KV_FUSE == 1 || (QD % 8 == 0 && !KV_QUANT), "KV_FUSE: 16-bit pages, QD % 8 == 0");

// The fused head (0 .. KV_FUSE - 1) whose dims row r of a block of nh query heads holds
__device__ inline int fused_part(int r, int nh) { return KV_FUSE == 1 ? 0 : r / (nh / KV_FUSE); }

// HEADS_ON_X (1): the grid is (row blocks, work) instead of (work, row blocks), so blocks
// launched one after another take the same work (pages) for different KV heads.
#ifndef HEADS_ON_X
#define HEADS_ON_X 0
#endif
__device__ inline unsigned block_work() { return HEADS_ON_X ? blockIdx.y : blockIdx.x; }
__device__ inline unsigned block_rows() { return HEADS_ON_X ? blockIdx.x : blockIdx.y; }
__device__ inline unsigned grid_rows() { return HEADS_ON_X ? gridDim.x : gridDim.y; }

// The column swizzle of decode_mma.cu's O over codes (O_SWZ, decode_mma_layout.cuh; read by
// decode_tc_merge.cuh): column c of row r is stored at c ^ o_swz(r, c), within its 16.
__device__ inline int o_swz(int r, int c) { return (2 * r + (c >> 5)) & 15; }

#endif  // DECODE_TC_SIZES_CUH
