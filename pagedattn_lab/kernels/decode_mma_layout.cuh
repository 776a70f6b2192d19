// paged_decode_mma's (decode_mma.cu) compile-time defaults, warp and tile sizes and
// shared-memory layout. Include after common.cuh and kv_quant.cuh.
#ifndef DECODE_MMA_LAYOUT_CUH
#define DECODE_MMA_LAYOUT_CUH

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
#ifndef SWIZZLE
#define SWIZZLE 1
#endif
#ifndef WARP_PIPE   // each warp copies and waits for its own tokens: no barrier in the loop
#define WARP_PIPE 0
#endif
#ifndef Q_REGS   // Q's fragments held in registers for the whole partition (else reloaded per tile)
#define Q_REGS (HEAD_DIM <= 128)
#endif
#ifndef CACHE_T
#define CACHE_T KV_T
#endif
#define TC_THREADS (32 * TC_WARPS)

constexpr int NWARPS = TC_WARPS;
constexpr int CWARPS = NWARPS / D_SPLIT;      // warps with a (row tile, token slice) of their own
constexpr int ROWS = 16 * ROW_TILES;          // rows of Q (query heads, padded)
constexpr int SLICES = CWARPS / ROW_TILES;    // token slices of a row tile
constexpr int TW = TILE_T / SLICES;           // tokens of a tile per warp
constexpr int D_TILES = HEAD_DIM / 16;        // k steps of S = Q K^T; 16-column pairs of O
constexpr int DP = D_TILES / D_SPLIT;         // the 16-column pairs of O one warp accumulates
constexpr int NT = TW / 8;                    // S accumulators (8 tokens each) per warp and tile
constexpr int LD = HEAD_DIM + 8;    // a row of Q in shared memory (elements): +16 bytes, so the
                                    // 8 rows of an ldmatrix fall in 8 different bank groups
constexpr int LO = HEAD_DIM + 8;    // a row of O at the end (floats)
constexpr int ROW_BYTES = HEAD_DIM * (int)sizeof(CACHE_T);   // one token's K (or V) row
constexpr int CHUNKS = ROW_BYTES / 16;        // 16-byte copies per K or V row
constexpr int CHUNK_ELEMS = 16 / (int)sizeof(CACHE_T);
static_assert(NWARPS % D_SPLIT == 0 && CWARPS % ROW_TILES == 0 && D_TILES % D_SPLIT == 0,
              "D_SPLIT must divide TC_WARPS and HEAD_DIM / 16; ROW_TILES, TC_WARPS / D_SPLIT");
static_assert(HEAD_DIM % 16 == 0 && TW % 16 == 0 && TILE_T == TW * SLICES && STAGES >= 2,
              "bad tile sizes");
static_assert(S_CHAINS == 1 || S_CHAINS == 2, "S_CHAINS is 1 or 2");
#if KV_QUANT   // codes are converted in registers: 16 codes per lane and load (see decode_mma.cu)
static_assert(HEAD_DIM % 128 == 0, "decode_mma.cu reads codes at head_dim 128 and 256");
static_assert((HEAD_DIM / 128) % D_SPLIT == 0, "D_SPLIT divides HEAD_DIM / 128 with codes");
#endif
constexpr int V_PASSES = HEAD_DIM / 128;      // codes: 128 columns of O per pass over V

// Staged K/V rows: the block copies whole tiles (STAGES in flight), K rows then V rows,
// chunk c of row r at chunk c ^ swz(r) of its 128-byte line (no padding) where the rows are a
// multiple of 128 bytes, else padded by 16 bytes. The swizzle puts what one phase of a
// shared load reads into different 16-byte bank groups:
//   fp16/bf16: an ldmatrix reads one chunk of 8 consecutive rows: swz(r) = r % 8;
//   codes: a K load reads chunks 4b .. 4b + 3 of rows 2p, 2p + 1 (bit 2 of swz must differ)
//   and a V load the same pair of chunks of rows 2p, 2p + 2, 2p + 4, 2p + 6 (bits 1, 2 must
//   all differ): swz(r) = (r & 6) ^ 4 (r & 1).
#if WARP_PIPE
constexpr int CP_THREADS = 32, CP_TOKENS = TW, COPIERS = NWARPS;   // a copier: a warp
static_assert(ROW_TILES == 1 && D_SPLIT == 1, "WARP_PIPE: one warp per token slice");
#else
constexpr int CP_THREADS = TC_THREADS, CP_TOKENS = TILE_T, COPIERS = 1;   // the block
#endif
constexpr bool SWZ = (SWIZZLE || KV_QUANT) && CHUNKS % 8 == 0;
constexpr int LDC = SWZ ? ROW_BYTES : ROW_BYTES + 16;       // a staged row, bytes
constexpr int STAGE_BYTES = 2 * CP_TOKENS * LDC;             // a copier's stage: K, then V rows
// where 16-byte chunk c of staged row r lands (bytes from the stage's start)
__device__ inline int stage_at(int r, int c)
{
    const int swz = KV_QUANT ? (r & 6) ^ ((r & 1) << 2) : r & 7;
    return r * LDC + (SWZ ? c ^ swz : c) * 16;
}

// Shared memory, in bytes from the start (decode_plan.mma_shared_bytes computes the same).
// The region of the staged tiles (and per-token scales: [STAGES][2][TILE_T] floats) is
// reused at the end for the warps' O and the merge. Copier c's stages start at
// c * STAGES * STAGE_BYTES, its scales at SC_OFF + c * STAGES * 2 * CP_TOKENS * 4.
constexpr int SC_OFF = COPIERS * STAGES * STAGE_BYTES;
constexpr int KV_BYTES = SC_OFF + (KV_QUANT && PER_TOKEN_SCALES ? STAGES * 2 * TILE_T * 4 : 0);
constexpr int O_BYTES = CWARPS * 16 * LO * 4;
constexpr int REGION = ((KV_BYTES > O_BYTES ? KV_BYTES : O_BYTES) + 127) / 128 * 128;
constexpr int Q_OFF = REGION;                                // [ROWS][LD]
constexpr int M_OFF = Q_OFF + ROWS * LD * 2;                 // [NWARPS][16]: the warps' m
constexpr int L_OFF = M_OFF + NWARPS * 16 * 4;               // [NWARPS][16]: the warps' l
constexpr int FLAG_OFF = L_OFF + NWARPS * 16 * 4;
constexpr int SMEM_BYTES = FLAG_OFF + 16;
static_assert(SMEM_BYTES <= 227 * 1024, "a block may have at most 227 KB of shared memory");

#endif  // DECODE_MMA_LAYOUT_CUH
