// Grouped decode on tensor cores with the TOKENS as the rows of the tile: S^T = K Q^T and
// O^T = V^T P^T on PTX mma.sync.m16n8k16 (mma_ptx.cuh). The block-level flow is decode_mma.cu's,
// through the same headers: a block streams the segments of its range (balanced ranges across
// sequences, or one work item), the copies running on across segment boundaries, and each
// segment ends with the shared merge (decode_tc_merge.cuh).
//
// Why transposed: decode_mma.cu puts the group's query heads on the 16 rows of the A operand
// (S = Q K^T). With GQA 4 heads per KV head, 12 of those rows are padding, so per 16 tokens
// at head_dim 128 it issues 16 mma for S and 16 for P V, and O takes 64 fp32 registers per
// lane. Here the 16 rows are 16 tokens (A = a K tile, 16 tokens x 16 dims) and the heads are
// the n = 8 columns (B = Q^T; groups up to 8 in one n tile, 16 in two): 8 + 8 mma per 16
// tokens, O^T (head_dim x 8 heads) 32 registers per lane, Q^T's fragments 16 (the "swap AB"
// of GEMM kernels whose M is smaller than the instruction's).
//
// Fragment layout (MMA_PTX_API.md; lane = 4 g + t): the S^T accumulator of an m tile of 16
// tokens holds s[0..1] = S^T[token g][heads 2t, 2t+1], s[2..3] = S^T[token g + 8][...]. So
// the softmax runs per head (column) over tokens (rows): a lane's max covers its two tokens
// of every m tile, then xor 4, 8, 16 over the 8 lanes of a column pair. P^T is the B operand
// of O^T = V^T P^T: b[0] = P^T[tokens 2t, 2t+1][head g], b[1] = [tokens 2t+8, 2t+9][head g]:
// the transpose of the packed accumulator pairs (pack2(s[0], s[1]) is P[g][2t, 2t+1] of the
// 8x8 block of tokens 0-7), which movmatrix_trans does in registers.
// fp16/bf16 pages: K (A, token rows) by ldmatrix, V^T (A: dims x tokens) by ldmatrix.trans.
// Compressed pages: codes converted in registers (decode_mma.cu's codes4_to_kv, here from
// decode_mma_ops.cuh); K: lane t of group g loads 16 codes of tokens g and g + 8 (dims 64 b +
// 16 t .. + 15), k step 4 b + j takes 4 of them (the k slots permuted; Q^T's rows alike);
// V^T: lane g loads 16 codes (dims 128 p + 16 g .. + 15) of tokens 2t, 2t+1, 2t+8, 2t+9, and
// byte permutes pair the tokens: m tile 8 p + mt, row g (g + 8) is dim 128 p + 16 g + 2 mt
// (+ 1). Static scales fold into the logit scale and the output; per-token K scales multiply
// S^T's rows, V scales P^T's entries before the pack (not l).
//
// Thread-to-data mapping: grid = (ranges, num_kv_heads) ((num_kv_heads, ranges) with
// -DHEADS_ON_X); block = TC_WARPS warps streaming the segments of range x (decode_mma.cu's
// loop over segments around the loop over their tiles); warp w (cw = w % CWARPS) takes the
// cw-th slice of TW tokens of every tile (TW / 16 m tiles at a time: independent chains, one
// max reduction per tile), keeps (m, l, O^T) of its heads in registers for the segment; at the
// segment's end the warps' O go to the stage buffer of the tile just computed and merge
// (decode_tc_merge.cuh). D_SPLIT > 1: that many warps share a slice, each accumulating
// 1/D_SPLIT of O^T's dims.
//
// Compile-time parameters (decode_plan.tc_config, impl "rows"): decode_mma.cu's (ROW_TILES 1;
// S_CHAINS 2: odd and even k steps in two accumulators), HEAD_TILES (1: up to 8 heads per
// KV head, 2: up to 16) and, over codes with up to 4 heads: HEAD_PAIRS (head h in columns
// 2h and 2h + 1 of S^T, the second unused: lane t's first column is head t and its second
// holds nothing, P 0, so the softmax takes one column instead of two, and Q buffers have 4
// rows, not 16; the planner's choice over codes, benchmarks/NOTES.md "Compressed GQA: 8-bit
// mma for S (session 5)") and QK_MMA8 (implies HEAD_PAIRS: S^T on 8-bit tensor cores from
// the K codes as staged, read by ldmatrix; q split into two 8-bit codes per element, head
// h's hi in column 2h, lo in 2h + 1: decode_mma_ops.cuh; measured, off). On the H200 it is
// the planner's choice for groups up to 8 at head_dim 128 (codes too) and 256
// (benchmarks/NOTES.md, "Tensor-core decode v5").

#ifndef HEAD_TILES
#define HEAD_TILES 1
#endif
// a warp's O at a segment's end: its heads' rows only (decode_mma_layout.cuh; HEAD_PAIRS is
// decode_tc_sizes.cuh's, expanded where the layout uses it)
#define WARP_O_ROWS (HEAD_PAIRS ? 4 : 8 * HEAD_TILES)

#include "common.cuh"
#include "kv_quant.cuh"
#include "kv_convert.cuh"
#include "mma_ptx.cuh"

#include "decode_tc_sizes.cuh"
#include "decode_mma_layout.cuh"
#include "decode_tc_tiles.cuh"
#include "decode_tc_merge.cuh"
#include "decode_mma_ops.cuh"
#include "decode_timeline.cuh"

// MERGE_AFTER_LOOP (decode_tc_merge.cuh, as decode_mma.cu): a split sequence's last block
// merges it after its tile loop, every part's loads in flight at once (one L2 round trip
// where merge_parts takes ~6); only the block's last segment waits, mid-range ones merge at
// once. The last segments of the one wave end together, so their merges are the kernel's tail.
#define DEFER_MERGE (MERGE_AFTER_LOOP && !SEPARATE_MERGE)

static_assert(ROW_TILES == 1 && (HEAD_TILES == 1 || HEAD_TILES == 2),
              "decode_mma_rows.cu: up to 16 heads per block, in one or two n tiles of 8");
static_assert(!QK_MMA8 || HEAD_PAIRS, "QK_MMA8 takes the head pairs' layout");
static_assert(!HEAD_PAIRS || (KV_QUANT && HEAD_TILES == 1),
              "HEAD_PAIRS: over codes, up to 4 heads (two columns each in one n tile)");
constexpr int MT = TW / 16;                   // m tiles (16 tokens) per warp and tile
#if KV_QUANT
constexpr int OM = 8 * V_PASSES / D_SPLIT;    // m tiles of O^T (16 dims) per warp
#else
constexpr int OM = DP;
#endif
// steps 2 and 4 of the loop below (after MT and OM, which they use)
#include "decode_mma_rows_steps.cuh"

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) paged_decode_mma_rows(
    const KV_T* __restrict__ q,            // [batch, num_heads, HEAD_DIM]
    const CACHE_T* __restrict__ k_cache,   // [num_pages, page_size, num_kv_heads, HEAD_DIM]
    const CACHE_T* __restrict__ v_cache,
    const float* __restrict__ k_scale,     // compressed pages: as decode_mma.cu (else unread)
    const float* __restrict__ v_scale,
    const int* __restrict__ block_tables,  // [batch, max_pages]
    const int* __restrict__ segs,          // [segments, 4]: (sequence, start, end, part|parts<<16)
    const int* __restrict__ seg_ptr,       // [work blocks + 1]: work block x's segments
    const int* __restrict__ slot_start,    // [batch]: the sequence's first partial-state slot
    KV_T* __restrict__ out,                // [batch, num_heads, HEAD_DIM]
    float* __restrict__ part_out,          // [slots, num_heads, HEAD_DIM]  (O / l)
    float* __restrict__ part_ml,           // [slots, num_heads, 2]         (m, l)
    int* __restrict__ counters,            // [batch, row blocks]: 0 between launches
    int num_heads, int num_kv_heads, int page_size, int page_shift, int max_pages,
    int rows_per_block, float scale_log2)
{
    TL_TIME(0);
    extern __shared__ __align__(128) unsigned char smem[];
    KV_T* qbufs = reinterpret_cast<KV_T*>(smem + Q_OFF);   // [STAGES][QROWS][LD]
    float* m_s = reinterpret_cast<float*>(smem + M_OFF);
    float* l_s = reinterpret_cast<float*>(smem + L_OFF);
    int* flag_s = reinterpret_cast<int*>(smem + FLAG_OFF);
#if DEFER_MERGE
    if (threadIdx.x == 0) flag_s[1] = -1;   // the sequence whose merge waits for the loop's end
#endif

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;           // the fragments' row and column pair
    const int cw = warp % CWARPS, dpart = warp / CWARPS;
    const int slice = cw;

    const DecodeRows rows = decode_rows(num_heads, num_kv_heads, rows_per_block);
    TileCursor cur = first_tile(segs, seg_ptr);   // the tile computed
    TileCursor ahead = cur;                       // the next tile copied
    const TileGeom geo = tile_geom(max_pages, page_size, page_shift, num_kv_heads, rows.kvh,
                                   slice);
    int pg[TILE_COPIES];
    const int copier = WARP_PIPE ? warp : 0;    // whose stage buffers: the warp's or the block's
    unsigned char* stages = smem + copier * STAGES * STAGE_BYTES;
    float* scales = reinterpret_cast<float*>(smem + SC_OFF) + copier * STAGES * 2 * CP_TOKENS;
    const int row0 = slice * TW - geo.cp_off;   // this warp's first row in a stage
    start_stream(stages, scales, qbufs, pg, ahead, segs, block_tables, k_cache, v_cache, k_scale,
                 v_scale, q, geo, rows, num_heads);
    const float v_mult = fold_head_scales(scale_log2, k_scale, v_scale, rows.kvh);
    copy_wait<STREAM_PRIMED - 1>();   // the first tile's group holds the first segment's Q
    __syncthreads();
    TL_TIME(1);

    // Q^T (B of S^T, k: dims, n: heads): b[0] = Q[head g][k 2t, 2t+1], b[1] = [k 2t+8, 2t+9]
    // of n tile h (heads 8 h + g; heads past the group are the zero rows of the segment's Q
    // buffer, qs).
    const KV_T* qs = qbufs;
#if KV_QUANT
    // k step 4 b + j: slots 2t, 2t+1 = dims 64 b + 16 t + 4 j, +1; slots 2t+8, 2t+9 = +2, +3
    // (HEAD_PAIRS: column g is head g / 2; the odd columns' scores are not used)
#if HEAD_PAIRS
    const int q_row = g / 2;
#else
    const int q_row = g;
#endif
    auto q_frag = [&](unsigned (&bq)[2], int h, int k) {
        const uint2 x = *reinterpret_cast<const uint2*>(
            qs + (8 * h + q_row) * LD + 16 * t + (k / 4) * 64 + (k % 4) * 4);
        bq[0] = x.x;
        bq[1] = x.y;
    };
#else
    auto q_frag = [&](unsigned (&bq)[2], int h, int k) {
        const KV_T* row = qs + (8 * h + g) * LD + 16 * k + 2 * t;
        bq[0] = *reinterpret_cast<const unsigned*>(row);
        bq[1] = *reinterpret_cast<const unsigned*>(row + 8);
    };
#endif
#if QK_MMA8
    unsigned q8[HEAD_DIM / 32][2];   // q split in 8-bit codes (at each segment's start)
    float qw[2];                     // the accumulators' weights (decode_mma_ops.cuh)
#elif Q_REGS
    unsigned qf[HEAD_TILES][D_TILES][2];   // (loaded at each segment's start)
#endif
    auto q_operand = [&](unsigned (&buf)[2], int h, int k) -> const unsigned* {
#if Q_REGS && !QK_MMA8
        return qf[h][k];
#else
        q_frag(buf, h, k);
        return buf;
#endif
    };
    // ldmatrix x4, lane l gives row l % 8 of matrix l / 8 (lm, lr):
    //   K (A, non-trans, 16 tokens x 16 dims): matrix m = tokens 8 (m % 2), dims 8 (m / 2)
    //   V^T (A from V rows, trans): matrix m = tokens 8 (m / 2), dims 8 (m % 2)
    const int lm = lane / 8, lr = lane % 8;
    const int k_row = row0 + (lm % 2) * 8 + lr, k_chunk = lm / 2;   // + 16 j tokens
    const int v_row = row0 + (lm / 2) * 8 + lr, v_chunk = lm % 2;   // + 16 j tokens

    int i = 0;   // the block's tiles so far (tile i is in stage buffer i % STAGES)
    while (tile_valid(cur)) {   // a segment: a fresh state, and the segment's Q
        qs = qbufs + (cur.seg % STAGES) * QROWS * LD;
#if QK_MMA8
        qk8_operands<LD>(q8, qw, qs, g, t, scale_log2);
#elif Q_REGS
#pragma unroll
        for (int h = 0; h < HEAD_TILES; ++h) {
#pragma unroll
            for (int k = 0; k < D_TILES; ++k) q_frag(qf[h][k], h, k);
        }
#endif
        float o[HEAD_TILES][OM][4];   // O^T[dims of m tile (rows g, g + 8)][heads 2t, 2t+1]
#pragma unroll
        for (int h = 0; h < HEAD_TILES; ++h) {
#pragma unroll
            for (int n = 0; n < OM; ++n) o[h][n][0] = o[h][n][1] = o[h][n][2] = o[h][n][3] = 0.0f;
        }
        float m_run[HEAD_TILES][2], l_run[HEAD_TILES][2];   // heads 2t, 2t+1: max (base 2), sum
#pragma unroll
        for (int h = 0; h < HEAD_TILES; ++h) {
            m_run[h][0] = m_run[h][1] = NEG_BIG;
            l_run[h][0] = l_run[h][1] = 0.0f;
        }

        for (;; ++i) {   // its tiles
            next_stream_tile(i, stages, scales, qbufs, pg, ahead, segs, block_tables, k_cache,
                             v_cache, k_scale, v_scale, q, geo, rows, num_heads);
            const unsigned char* ks = stages + (i % STAGES) * STAGE_BYTES;
            const unsigned char* vs = ks + CP_TOKENS * LDC;

            // 1. S^T = K Q^T: one accumulator per (m tile, n tile), MT x HEAD_TILES chains
            float s[MT][HEAD_TILES][4];
#if QK_MMA8
            // on 8-bit tensor cores from the K codes: k step k (32 dims: chunks 2k, 2k + 1) by
            // the fp16 path's ldmatrix (matrix m: tokens 8 (m % 2), chunk 2k + m / 2);
            // S_CHAINS 2: odd and even k steps in two accumulators
            constexpr int QC = S_CHAINS > 1 ? 2 : 1;
            qk_acc_t sa[MT][QC][4] = {};
#pragma unroll
            for (int k = 0; k < HEAD_DIM / 32; ++k) {
#pragma unroll
                for (int j = 0; j < MT; ++j) {
                    unsigned a[4];
                    ldmatrix_x4(a, ks + stage_at(k_row + 16 * j, 2 * k + k_chunk));
                    mma_qk8(sa[j][k % QC], a, q8[k]);
                }
            }
#pragma unroll
            for (int j = 0; j < MT; ++j) {
                qk_acc_t sum[4];
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    sum[e] = QC > 1 ? sa[j][0][e] + sa[j][QC - 1][e] : sa[j][0][e];
                qk8_logits(s[j][0], sum, qw);   // head t, already times scale_log2
            }
#else
            float s2[S_CHAINS > 1 ? MT : 1][HEAD_TILES][4];
#pragma unroll
            for (int j = 0; j < MT; ++j) {
#pragma unroll
                for (int h = 0; h < HEAD_TILES; ++h) {
                    s[j][h][0] = s[j][h][1] = s[j][h][2] = s[j][h][3] = 0.0f;
                    if (S_CHAINS > 1) s2[j][h][0] = s2[j][h][1] = s2[j][h][2] = s2[j][h][3] = 0.0f;
                }
            }
            // k step k's accumulator: S_CHAINS = 2 splits each chain of HEAD_DIM / 16 dependent
            // mma into two (odd and even k), summed before the softmax
            auto acc = [&](int j, int h, int k) -> float* {
                return S_CHAINS > 1 && k % 2 ? s2[S_CHAINS > 1 ? j : 0][h] : s[j][h];
            };
#if KV_QUANT
#pragma unroll
            for (int blk = 0; blk < HEAD_DIM / 64; ++blk) {
#pragma unroll
                for (int j = 0; j < MT; ++j) {
                    const uint4 r0 = *reinterpret_cast<const uint4*>(
                        ks + stage_at(row0 + 16 * j + g, 4 * blk + t));       // token g
                    const uint4 r8 = *reinterpret_cast<const uint4*>(
                        ks + stage_at(row0 + 16 * j + g + 8, 4 * blk + t));   // token g + 8
#pragma unroll
                    for (int jj = 0; jj < 4; ++jj) {
                        unsigned a[4];
                        codes4_to_kv(word_of(r0, jj), a[0], a[2]);
                        codes4_to_kv(word_of(r8, jj), a[1], a[3]);
#pragma unroll
                        for (int h = 0; h < HEAD_TILES; ++h) {
                            unsigned q_buf[2];
                            mma_acc(acc(j, h, jj), a, q_operand(q_buf, h, 4 * blk + jj));
                        }
                    }
                }
            }
#else
#pragma unroll
            for (int k = 0; k < D_TILES; ++k) {
#pragma unroll
                for (int j = 0; j < MT; ++j) {
                    unsigned a[4];
                    ldmatrix_x4(a, ks + stage_at(k_row + 16 * j, 2 * k + k_chunk));
#pragma unroll
                    for (int h = 0; h < HEAD_TILES; ++h) {
                        unsigned q_buf[2];
                        mma_acc(acc(j, h, k), a, q_operand(q_buf, h, k));
                    }
                }
            }
#endif

#if S_CHAINS > 1
#pragma unroll
            for (int j = 0; j < MT; ++j) {
#pragma unroll
                for (int h = 0; h < HEAD_TILES; ++h) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[j][h][e] += s2[j][h][e];
                }
            }
#endif
#endif   // QK_MMA8

            // 2. online softmax per head (column): rows_softmax (decode_mma_rows_steps.cuh)
            const int tok0 = cur.t0 + slice * TW + g;   // token of row g, m tile 0
            const bool tail = cur.t0 + (slice + 1) * TW > cur.end;   // warp-uniform
            const float* ksc = scales + (i % STAGES) * 2 * CP_TOKENS + row0 + g;   // (per token)
            rows_softmax(s, m_run, l_run, o, scale_log2, tok0, tail, cur.end, ksc,
                         ksc + CP_TOKENS);

            // 3. O^T += V^T P^T per m tile of 16 tokens: P^T's B operand from the packed
            // accumulators, transposed in registers
#pragma unroll
            for (int j = 0; j < MT; ++j) {
                unsigned pb[HEAD_TILES][2];
#pragma unroll
                for (int h = 0; h < HEAD_TILES; ++h) {
                    pb[h][0] = movmatrix_trans(pack2(s[j][h][0], s[j][h][1]));   // tokens 0-7
                    pb[h][1] = movmatrix_trans(pack2(s[j][h][2], s[j][h][3]));   // tokens 8-15
                }
#if KV_QUANT
                // A = V^T: lane g loads 16 codes of each of its tokens 2t, 2t+1, 2t+8, 2t+9
                const int r0 = row0 + 16 * j + 2 * t;
#pragma unroll
                for (int pp = 0; pp < V_PASSES / D_SPLIT; ++pp) {
                    const int pass = dpart * (V_PASSES / D_SPLIT) + pp;
                    uint4 raw[4];   // tokens 2t, 2t+1, 2t+8, 2t+9
                    load_code_quad(raw, vs, r0, 8 * pass + g);
#pragma unroll
                    for (int w = 0; w < 4; ++w) {   // bytes 4w .. 4w + 3: m tiles 2w, 2w + 1
                        unsigned v01[4], v89[4];   // [c]: byte c of tokens (2t, 2t+1), (2t+8, 2t+9)
                        token_pairs(raw, w, v01, v89);
#pragma unroll
                        for (int half = 0; half < 2; ++half) {   // rows g, g + 8: bytes 2 half, +1
                            const unsigned a[4] = {v01[2 * half], v01[2 * half + 1],
                                                   v89[2 * half], v89[2 * half + 1]};
#pragma unroll
                            for (int h = 0; h < HEAD_TILES; ++h)
                                mma_acc(o[h][8 * pp + 2 * w + half], a, pb[h]);
                        }
                    }
                }
#else
#pragma unroll
                for (int d = 0; d < DP; ++d) {
                    unsigned a[4];
                    ldmatrix_x4_trans(a, vs + stage_at(v_row + 16 * j,
                                                       2 * (dpart * DP + d) + v_chunk));
#pragma unroll
                    for (int h = 0; h < HEAD_TILES; ++h) mma_acc(o[h][d], a, pb[h]);
                }
#endif
            }
            if (last_of_segment(cur)) break;   // (block-uniform)
            advance_tile(cur, segs);
        }
        TL_TIME(2);

        // 4. the end of the segment: the warps' states into the stage buffer of the tile just
        // computed (decode_mma_rows_steps.cuh), then the merge into the segment's output or
        // partial state
        float* os = reinterpret_cast<float*>(smem + (i % STAGES) * STAGE_BYTES);
        rows_states_to_stage(m_run, l_run, o, m_s, l_s, os + cw * O_WSTRIDE, cw, dpart, g, t);
        copy_wait<STAGES - 2>();   // the next tile, with the next segment's Q, has landed
        __syncthreads();
        finish_rows<LO, O_WSTRIDE>(m_s, l_s, os, flag_s, out, part_out, part_ml, counters,
                                   slot_start, cur.b, segment_part(cur), segment_parts(cur),
                                   num_heads, rows.h0, rows.nh, v_mult,
                                   DEFER_MERGE && cur.seg + 1 >= cur.last);
#if DEFER_MERGE   // the block's last segment: if it is the last part, merge after the loop
        defer_merge_of(flag_s, cur.seg + 1 >= cur.last, cur.b, segment_parts(cur));
#endif
        __syncthreads();   // the buffer, m_s and l_s are free again
        TL_TIME(3);
#if TIMELINE
        TL_MARK(4, tl_smid());
        TL_MARK(5, segment_parts(cur) > 1 ? flag_s[0] : 2);
        TL_MARK(6, i + 1);
        TL_MARK(7, cur.seg - seg_ptr[block_work()] + 1);   // segments so far
        if (cur.seg == seg_ptr[block_work()]) TL_MARK(12, tl_now());   // the first one's end
#endif
        advance_tile(cur, segs);
        ++i;
    }
#if DEFER_MERGE
    merge_deferred(flag_s, smem, out, part_out, part_ml, slot_start, num_heads, rows.h0, rows.nh);
#endif
}
