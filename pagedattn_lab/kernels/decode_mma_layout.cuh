// paged_decode_mma's (decode_mma.cu) own compile-time defaults and sizes and its shared-memory
// layout. Include after common.cuh, kv_quant.cuh and decode_tc_sizes.cuh (the defaults and
// sizes it shares with decode_tc.cu).
#ifndef DECODE_MMA_LAYOUT_CUH
#define DECODE_MMA_LAYOUT_CUH

#ifndef SWIZZLE
#define SWIZZLE 1
#endif
#ifndef Q_REGS   // Q's fragments held in registers for the whole partition (else reloaded per tile)
#define Q_REGS (HEAD_DIM <= 128)
#endif

constexpr int DP = D_TILES / D_SPLIT;         // the 16-column pairs of O one warp accumulates
constexpr int NT = TW / 8;                    // S accumulators (8 tokens each) per warp and tile
constexpr int LD = HEAD_DIM + 8;    // a row of Q in shared memory (elements): +16 bytes, so the
                                    // 8 rows of an ldmatrix fall in 8 different bank groups
constexpr int LO = HEAD_DIM + 8;    // a row of O at the end (floats)
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
