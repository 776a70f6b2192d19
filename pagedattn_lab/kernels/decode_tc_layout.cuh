// paged_decode_tc's (decode_tc.cu) own sizes, shared-memory layout and fragment types.
// Include after common.cuh, kv_quant.cuh, <mma.h> and decode_tc_sizes.cuh (the defaults and
// sizes it shares with decode_mma.cu).
#ifndef DECODE_TC_LAYOUT_CUH
#define DECODE_TC_LAYOUT_CUH

using namespace nvcuda;

constexpr int LD = HEAD_DIM + 8;    // shared row of Q, K, V (elements): +16 bytes against bank conflicts
constexpr int LSW = TW + 4;         // a warp's row of S (floats)
constexpr int LPW = TW + 8;         // a warp's row of P (elements)
constexpr int LO = HEAD_DIM + 4;    // a row of O at the end (floats)
constexpr int DT = D_TILES / D_SPLIT;         // the 16-column tiles of O a warp accumulates
constexpr int CPL = TW / 2;                   // softmax columns per lane (two lanes per row)

// Shared memory, in bytes from the start (decode_plan.tc_shared_bytes computes the same).
// Staged tiles: STAGES x (K rows, V rows) as they come from the cache: KV_T rows padded to
// LD, or rows of codes (never read by WMMA, so unpadded).
// WARP_PIPE=1: every warp copies, waits for and converts its own TW tokens (its own stages,
// no barrier between warps in the loop); else the block copies whole tiles together.
#if WARP_PIPE
constexpr int CP_THREADS = 32, CP_TOKENS = TW;               // one copier: a warp
static_assert(ROW_TILES == 1 && D_SPLIT == 1, "WARP_PIPE: one warp per token slice");
#else
constexpr int CP_THREADS = TC_THREADS, CP_TOKENS = TILE_T;   // one copier: the block
#endif
constexpr int LDC = KV_QUANT ? ROW_BYTES : LD * 2;           // a staged row, bytes
constexpr int STAGE_BYTES = 2 * CP_TOKENS * LDC;             // a copier's stage: K, then V rows
// where 16-byte chunk c of staged row r lands (bytes from the stage's start)
__device__ inline int stage_at(int r, int c) { return r * LDC + c * 16; }
// (the copiers' stages, converted tiles and scales add up to the same bytes either way)
#if KV_QUANT
constexpr int WKV_OFF = STAGES * 2 * TILE_T * LDC;           // [copier][2][CP_TOKENS][LD]
constexpr int SC_OFF = WKV_OFF + 2 * TILE_T * LD * 2;        // [copier][STAGES][2][CP_TOKENS]
constexpr int KV_BYTES = SC_OFF + (PER_TOKEN_SCALES ? STAGES * 2 * TILE_T * 4 : 0);
#else
constexpr int KV_BYTES = STAGES * 2 * TILE_T * LDC;
constexpr int SC_OFF = KV_BYTES;                             // (no scales: never read)
#endif
constexpr int Q_OFF = KV_BYTES;                              // [ROWS][LD]
constexpr int S_OFF = Q_OFF + ROWS * LD * 2;                 // [NWARPS][16][LSW] floats
constexpr int P_OFF = S_OFF + NWARPS * 16 * LSW * 4;         // [NWARPS][16][LPW]
constexpr int ROWID_OFF = P_OFF + NWARPS * 16 * LPW * 2;     // [16][16] floats
constexpr int ALPHA_OFF = ROWID_OFF + 16 * 16 * 4;           // [NWARPS][16] floats
constexpr int M_OFF = ALPHA_OFF + NWARPS * 16 * 4;           // [NWARPS][16]: the warps' m
constexpr int L_OFF = M_OFF + NWARPS * 16 * 4;               // [NWARPS][16]: the warps' l
constexpr int FLAG_OFF = L_OFF + NWARPS * 16 * 4;
constexpr int SMEM_BYTES = FLAG_OFF + 16;
static_assert(SMEM_BYTES <= 227 * 1024, "a block may have at most 227 KB of shared memory");
static_assert(CWARPS * 16 * LO * 4 <= KV_BYTES, "the warps' O do not fit where the K/V tiles were");
static_assert(KV_BYTES % 128 == 0, "keep Q and the rest 128-byte aligned");

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_frag;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, KV_T, wmma::row_major> a_frag;

#endif  // DECODE_TC_LAYOUT_CUH
