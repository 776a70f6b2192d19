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
constexpr int LO = HEAD_DIM;        // a row of a warp's O at a segment's end (floats)
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
//   all differ): swz(r) = (r & 6) ^ 4 (r & 1);
//   codes with QK_MMA8 (decode_mma_rows.cu: K's codes are mma operands as they are, read by
//   ldmatrix like fp16 K): swz(r) = r % 8, under which the V loads do not conflict either.
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
    const int swz = KV_QUANT && !QK_MMA8 ? (r & 6) ^ ((r & 1) << 2) : r & 7;
    return r * LDC + (SWZ ? c ^ swz : c) * 16;
}

// Codes: chunk c (16 codes) of the staged rows r0, r0 + 1, r0 + 8, r0 + 9, a lane's tokens 2t,
// 2t + 1, 2t + 8, 2t + 9 of a 16-token tile of V (its operand of P V: r0 = the tile's row + 2t)
__device__ inline void load_code_quad(uint4 (&raw)[4], const unsigned char* vs, int r0, int c)
{
#pragma unroll
    for (int r = 0; r < 4; ++r)
        raw[r] = *reinterpret_cast<const uint4*>(vs + stage_at(r0 + (r % 2) + 8 * (r / 2), c));
}

// At the end of a segment the warps' O go to the stage buffer of the tile just computed (free
// until the next tile's copies are issued; the others hold tiles in flight): a copier's
// buffer holds the O of its warps (the block's: warp w at w * WARP_O_ROWS rows; WARP_PIPE:
// warp w's own buffer, O_WSTRIDE floats apart), and then the merge's weights
// (decode_tc_merge.cuh). WARP_O_ROWS: 16, a row tile (decode_mma_rows.cu: its heads' rows).
#ifndef WARP_O_ROWS
#define WARP_O_ROWS 16
#endif
constexpr int O_WSTRIDE = WARP_PIPE ? STAGES * STAGE_BYTES / 4 : WARP_O_ROWS * LO;   // floats
// Codes: O's columns come out permuted (column 32 t + c of lane 4 g + t, see store_warp_o),
// so that the 32 lanes of a store would hit one bank: column c of row r goes to c ^ o_swz
// (bits 0-3, within its 16; every read of a row's 32 columns is still conflict-free).
constexpr bool O_SWZ = KV_QUANT != 0;
static_assert((WARP_PIPE ? 1 : CWARPS) * WARP_O_ROWS * LO * 4 <= STAGE_BYTES,
              "the warps' O do not fit in a stage buffer: more tokens per warp (tc_config)");

// Shared memory, in bytes from the start (decode_plan.mma_shared_bytes computes the same):
// the staged tiles (and per-token scales: [STAGES][2][TILE_T] floats), then STAGES buffers
// of Q (one per live segment), the warps' m and l and a flag. Copier c's stages start at
// c * STAGES * STAGE_BYTES, its scales at SC_OFF + c * STAGES * 2 * CP_TOKENS * 4.
constexpr int SC_OFF = COPIERS * STAGES * STAGE_BYTES;
constexpr int KV_BYTES = SC_OFF + (KV_QUANT && PER_TOKEN_SCALES ? STAGES * 2 * TILE_T * 4 : 0);
constexpr int Q_OFF = (KV_BYTES + 127) / 128 * 128;          // [STAGES][QROWS][LD]
constexpr int M_OFF = Q_OFF + STAGES * QROWS * LD * 2;       // [NWARPS][16]: the warps' m
constexpr int L_OFF = M_OFF + NWARPS * 16 * 4;               // [NWARPS][16]: the warps' l
constexpr int FLAG_OFF = L_OFF + NWARPS * 16 * 4;
constexpr int SMEM_BYTES = FLAG_OFF + 16;
static_assert(SMEM_BYTES <= 227 * 1024, "a block may have at most 227 KB of shared memory");

// A warp's O accumulators (rows g, g + 8; its 1/D_SPLIT of the columns) into its rows of ow
// (row stride LO floats). Codes: n tile 16 p + c, column 2t (+1) is dim 128 p + 16 (2t (+1))
// + c (decode_mma.cu's V loads); else n tile n holds dims 8 n + 2t, + 1.
__device__ inline void store_warp_o(float* ow, const float (&o)[DP * 2][4], int g, int t,
                                    int dpart)
{
#pragma unroll
    for (int n = 0; n < DP * 2; ++n) {
#if KV_QUANT
        const int col = dpart * DP * 16 + 128 * (n / 16) + 32 * t + n % 16;
        ow[g * LO + (col ^ o_swz(g, col))] = o[n][0];
        ow[g * LO + ((col + 16) ^ o_swz(g, col + 16))] = o[n][1];
        ow[(g + 8) * LO + (col ^ o_swz(g + 8, col))] = o[n][2];
        ow[(g + 8) * LO + ((col + 16) ^ o_swz(g + 8, col + 16))] = o[n][3];
#else
        float* o0 = ow + g * LO + dpart * DP * 16 + 8 * n + 2 * t;
        *reinterpret_cast<float2*>(o0) = make_float2(o[n][0], o[n][1]);
        *reinterpret_cast<float2*>(o0 + 8 * LO) = make_float2(o[n][2], o[n][3]);
#endif
    }
}

#endif  // DECODE_MMA_LAYOUT_CUH
