// Grouped decode on tensor cores with the softmax in registers: the algorithm of decode_tc.cu
// (the group's query heads as the rows of Q, S = Q K^T and O = softmax(S) V per K/V tile,
// split-K with a partial-state merge), written on PTX mma.sync.m16n8k16 and ldmatrix
// (mma_ptx.cuh) instead of WMMA.
//
// Why a second source: WMMA does not say which element of a fragment a thread holds, so
// decode_tc.cu (lesson 09's kernel) stores S to shared memory, lets lanes do the softmax
// there and reloads P as a fragment, with __syncwarp()s between: a chain per 16 tokens that
// is latency, not bandwidth (benchmarks/NOTES.md: 77-79% of the copy rate on D64 GQA). The
// PTX instruction's layout is specified, so here S stays in the accumulators, the softmax is
// done in registers (the 4 lanes of a quad hold one row), and P is packed straight into the
// A operand of P V. This is what FlashAttention-2 and FlashInfer do (FlashInfer's tensor-core
// decode is its prefill kernel with the group's heads as rows).
//
// Fragment layout (MMA_PTX_API.md; lane = 4 g + t): S accumulator of 8 tokens, s[0..1] =
// S[row g][tokens 2t, 2t+1], s[2..3] = S[row g + 8][tokens 2t, 2t+1]. Two such accumulators
// (16 tokens) are exactly the A operand of P V for those 16 tokens once packed in pairs.
// K tiles are read with ldmatrix (non-transposed: a K row is a column of B = K^T, and its
// 16-byte pieces are what B's "col" layout wants), V tiles with ldmatrix.trans.
//
// Thread-to-data mapping: grid = (ranges, num_kv_heads * row_chunks) (swapped with
// -DHEADS_ON_X: block_work(), block_rows()), block = TC_WARPS warps. Block (x, y) streams
// the segments of range x (decode_tc_tiles.cuh; the plan's list,
// decode_work.balanced_segments or item_segments): pieces of sequences, their tiles back to
// back, the copies running on across segment boundaries (no drain, no cold start per piece),
// for the query heads of y. Warp w (cw = w % (TC_WARPS / D_SPLIT)) takes row tile
// cw % ROW_TILES and the cw / ROW_TILES-th slice of TW tokens of every tile and keeps its own
// (m, l, O) for its 16 rows in registers; at the end of each segment the warps merge into
// its output or partial state (decode_tc_merge.cuh: the last block of a split sequence
// merges the parts). D_SPLIT > 1: that many warps share a (row tile, slice), each computes
// S and the softmax and accumulates 1/D_SPLIT of O's columns (head_dim 256: fewer registers
// per warp). The tiles stream through shared memory (page ids read one tile ahead, cp.async,
// STAGES in flight, one barrier per tile; WARP_PIPE=1: each warp copies and waits for its own
// tokens, no barrier), rows swizzled (decode_mma_layout.cuh); each segment's Q comes with
// its first tile into one of STAGES Q buffers.
//
// Compile-time parameters (NVRTC -D; decode_plan.tc_config makes a consistent set): KV_T
// (and KV_BF16), HEAD_DIM, TC_WARPS, ROW_TILES, TILE_T, STAGES, D_SPLIT, S_CHAINS (1 or 2
// independent accumulator chains for S), TC_MIN_BLOCKS, SWIZZLE, Q_REGS, WARP_PIPE; compressed
// pages: KV_QUANT, CACHE_T, PER_TOKEN_SCALES (kv_quant.cuh, as decode_tc.cu).

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

// MERGE_AFTER_LOOP (decode_tc_merge.cuh): a split sequence's last block merges it after its
// tile loop, where the loop's registers are free for the merge's loads in flight (only the
// block's last segment waits: a segment in mid-range merges at once, as before).
#define DEFER_MERGE (MERGE_AFTER_LOOP && !SEPARATE_MERGE)

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) paged_decode_mma(
    const KV_T* __restrict__ q,            // [batch, num_heads, HEAD_DIM]
    const CACHE_T* __restrict__ k_cache,   // [num_pages, page_size, num_kv_heads, HEAD_DIM]
    const CACHE_T* __restrict__ v_cache,
    const float* __restrict__ k_scale,     // compressed pages: as decode_tc.cu (else unread)
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
    KV_T* qbufs = reinterpret_cast<KV_T*>(smem + Q_OFF);   // [STAGES][ROWS][LD]
    float* m_s = reinterpret_cast<float*>(smem + M_OFF);
    float* l_s = reinterpret_cast<float*>(smem + L_OFF);
    int* flag_s = reinterpret_cast<int*>(smem + FLAG_OFF);
#if DEFER_MERGE
    if (threadIdx.x == 0) flag_s[1] = -1;   // the sequence whose merge waits for the loop's end
#endif

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;           // the fragments' row and column pair
    const int cw = warp % CWARPS, dpart = warp / CWARPS;
    const int rt = cw % ROW_TILES, slice = cw / ROW_TILES;

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

    // ldmatrix x4: lane l gives row l % 8 of matrix l / 8.
    //   Q (A operand, 16 x 16 at k step k): matrix m = rows 8 (m % 2), columns 8 (m / 2).
    //   K (B of S, 16 tokens x 16 dims): matrix m = tokens 8 (m / 2), dims 8 (m % 2):
    //     registers 0, 1 are b of tokens 0-7, 2, 3 of tokens 8-15.
    //   V (B of P V, trans, 16 tokens x 16 dims): matrix m = tokens 8 (m % 2), dims 8 (m / 2):
    //     registers 0, 1 are b of dims 0-7, 2, 3 of dims 8-15.
    const int lm = lane / 8, lr = lane % 8;
#if KV_QUANT
    // Codes: the dims of a k step are permuted (S = sum over dims, in any order, as long as
    // Q and K agree): lane t's K load gives dims 64 b + 16 t .. + 15 of its token, of which
    // k step 4 b + j takes dims 64 b + 16 t + 4 j .. + 3 (k slots 2t, 2t+1, 2t+8, 2t+9).
    const int q_at = (rt * 16 + g) * LD + 16 * t;
    const KV_T* q_lane = qbufs + (cur.seg % STAGES) * ROWS * LD + q_at;   // this segment's Q
    auto q_frag = [&](unsigned (&a)[4], int k) {
        const int col = (k / 4) * 64 + (k % 4) * 4;
        const uint2 lo = *reinterpret_cast<const uint2*>(q_lane + col);
        const uint2 hi = *reinterpret_cast<const uint2*>(q_lane + 8 * LD + col);
        a[0] = lo.x; a[1] = hi.x; a[2] = lo.y; a[3] = hi.y;
    };
#else
    const int q_at = (rt * 16 + (lm % 2) * 8 + lr) * LD + (lm / 2) * 8;
    const KV_T* q_lane = qbufs + (cur.seg % STAGES) * ROWS * LD + q_at;   // this segment's Q
    auto q_frag = [&](unsigned (&a)[4], int k) { ldmatrix_x4(a, q_lane + k * 16); };
#endif
#if Q_REGS
    unsigned qf[D_TILES][4];   // (loaded at each segment's start)
#endif
    // Q's A operand of k step k: held in registers (Q_REGS), else loaded into buf
    auto q_operand = [&](unsigned (&buf)[4], int k) -> const unsigned* {
#if Q_REGS
        return qf[k];
#else
        q_frag(buf, k);
        return buf;
#endif
    };
    const int k_row = row0 + (lm / 2) * 8 + lr, k_chunk = lm % 2;   // + 16 j tokens, 2 k chunks
    const int v_row = row0 + (lm % 2) * 8 + lr, v_chunk = lm / 2;   // + 16 j tokens, 2 d chunks

    int i = 0;   // the block's tiles so far (tile i is in stage buffer i % STAGES)
    while (tile_valid(cur)) {   // a segment: a fresh state, and the segment's Q
        q_lane = qbufs + (cur.seg % STAGES) * ROWS * LD + q_at;
#if Q_REGS
#pragma unroll
        for (int k = 0; k < D_TILES; ++k) q_frag(qf[k], k);
#endif
        float o[DP * 2][4];   // O[row g, g + 8][dims 8 n + 2t, +1] of this warp's columns
#pragma unroll
        for (int n = 0; n < DP * 2; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
        float m_run[2] = {NEG_BIG, NEG_BIG};   // rows g and g + 8: running max (base 2)
        float l_run[2] = {0.0f, 0.0f};         // ... and this lane's share of the row sums

        for (;; ++i) {   // its tiles
            next_stream_tile(i, stages, scales, qbufs, pg, ahead, segs, block_tables, k_cache,
                             v_cache, k_scale, v_scale, q, geo, rows, num_heads);
            const unsigned char* ks = stages + (i % STAGES) * STAGE_BYTES;
            const unsigned char* vs = ks + CP_TOKENS * LDC;

            // 1. S = Q K^T: 8 tokens per accumulator, S_CHAINS independent chains over k.
            float s[NT][4];
#pragma unroll
            for (int n = 0; n < NT; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#if S_CHAINS == 2
            float s2[NT][4];
#pragma unroll
            for (int n = 0; n < NT; ++n) s2[n][0] = s2[n][1] = s2[n][2] = s2[n][3] = 0.0f;
#endif
#if KV_QUANT
            // 16 codes of one token per lane and load: K row g of each 8 tokens, dims 64 b + 16 t
#pragma unroll
            for (int blk = 0; blk < HEAD_DIM / 64; ++blk) {
#pragma unroll
                for (int n = 0; n < NT; ++n) {
                    const uint4 raw = *reinterpret_cast<const uint4*>(
                        ks + stage_at(row0 + 8 * n + g, 4 * blk + t));
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const int k = 4 * blk + j;
                        unsigned a_buf[4];
                        const unsigned* a = q_operand(a_buf, k);
                        unsigned kb[2];
                        codes4_to_kv(word_of(raw, j), kb[0], kb[1]);
#if S_CHAINS == 2
                        mma_acc(j % 2 ? s2[n] : s[n], a, kb);
#else
                        mma_acc(s[n], a, kb);
#endif
                    }
                }
            }
#else
#pragma unroll
            for (int k = 0; k < D_TILES; ++k) {
                unsigned a_buf[4];
                const unsigned* a = q_operand(a_buf, k);
#pragma unroll
                for (int j = 0; j < TW / 16; ++j) {
                    unsigned kb[4];
                    ldmatrix_x4(kb, ks + stage_at(k_row + 16 * j, 2 * k + k_chunk));
#if S_CHAINS == 2
                    float (*acc)[4] = k % 2 ? s2 : s;
#else
                    float (*acc)[4] = s;
#endif
                    mma_acc(acc[2 * j], a, kb);
                    mma_acc(acc[2 * j + 1], a, kb + 2);
                }
            }
#endif
#if S_CHAINS == 2
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) s[n][e] += s2[n][e];
            }
#endif

            // 2. online softmax in registers: the 4 lanes of a quad hold a row (xor 1, 2)
            const int t0 = cur.t0 + slice * TW + 2 * t;
            const bool tail = cur.t0 + (slice + 1) * TW > cur.end;   // warp-uniform
            float mx[2] = {NEG_BIG, NEG_BIG};
#if KV_QUANT && PER_TOKEN_SCALES   // the token's scales: K's on its logit, V's on its P entry
            const float* ksc = scales + (i % STAGES) * 2 * CP_TOKENS + row0 + 2 * t;
            const float* vsc = ksc + CP_TOKENS;
#endif
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float x = s[n][e] * scale_log2;
#if KV_QUANT && PER_TOKEN_SCALES
                    x *= ksc[8 * n + e % 2];
#endif
                    if (tail && t0 + 8 * n + (e % 2) >= cur.end) x = NEG_INF;
                    s[n][e] = x;
                    mx[e / 2] = fmaxf(mx[e / 2], x);
                }
            }
            float alpha[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
                const float m_new = fmaxf(m_run[h], mx[h]);
                alpha[h] = softmax_exp2(m_run[h] - m_new);
                m_run[h] = m_new;
                l_run[h] *= alpha[h];
            }
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    s[n][e] = softmax_exp2(s[n][e] - m_run[e / 2]);   // 0 for a masked token
                    l_run[e / 2] += s[n][e];
                }
            }
#pragma unroll
            for (int n = 0; n < DP * 2; ++n) {
                o[n][0] *= alpha[0];
                o[n][1] *= alpha[0];
                o[n][2] *= alpha[1];
                o[n][3] *= alpha[1];
            }

            // 3. O += P V: the accumulators of tokens 16 j .. 16 j + 15, packed, are the A operand
#if KV_QUANT && PER_TOKEN_SCALES
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) s[n][e] *= vsc[8 * n + e % 2];   // not in l
            }
#endif
#pragma unroll
            for (int j = 0; j < TW / 16; ++j) {
                const unsigned pa[4] = {pack2(s[2 * j][0], s[2 * j][1]),
                                        pack2(s[2 * j][2], s[2 * j][3]),
                                        pack2(s[2 * j + 1][0], s[2 * j + 1][1]),
                                        pack2(s[2 * j + 1][2], s[2 * j + 1][3])};
#if KV_QUANT
                // B = V (k: tokens 2t, 2t+1 and 2t+8, 2t+9; n: dims). Lane g loads 16 codes (dims
                // 128 p + 16 g .. + 15) of each of its 4 tokens; byte c of them is column g of
                // O's n tile 16 p + c, i.e. n tile 16 p + c, column g holds dim 128 p + 16 g + c.
                const int r0 = row0 + 16 * j + 2 * t;
#pragma unroll
                for (int pp = 0; pp < V_PASSES / D_SPLIT; ++pp) {
                    const int pass = dpart * (V_PASSES / D_SPLIT) + pp;
                    uint4 raw[4];   // tokens 2t, 2t+1, 2t+8, 2t+9
                    load_code_quad(raw, vs, r0, 8 * pass + g);
#pragma unroll
                    for (int w = 0; w < 4; ++w) {   // bytes 4w .. 4w + 3: n tiles 16 pp + 4w + c
                        unsigned b01[4], b89[4];   // [c]: the B registers of n tile 4w + c
                        token_pairs(raw, w, b01, b89);
#pragma unroll
                        for (int c = 0; c < 4; ++c) {
                            const unsigned vb[2] = {b01[c], b89[c]};
                            mma_acc(o[16 * pp + 4 * w + c], pa, vb);
                        }
                    }
                }
#else
#pragma unroll
                for (int d = 0; d < DP; ++d) {
                    unsigned vb[4];
                    ldmatrix_x4_trans(vb, vs + stage_at(v_row + 16 * j,
                                                        2 * (dpart * DP + d) + v_chunk));
                    mma_acc(o[2 * d], pa, vb);
                    mma_acc(o[2 * d + 1], pa, vb + 2);
                }
#endif
            }
            if (last_of_segment(cur)) break;   // (block-uniform)
            advance_tile(cur, segs);
        }

        TL_TIME(2);
        // 4. the end of the segment: the warps' states merged into its output or partial state
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 1);
            l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 2);
        }
#if WARP_PIPE
        __syncwarp();      // every lane is done with this tile's buffer (the warp's own)
#else
        __syncthreads();   // every warp is done with this tile's buffer
#endif
        // (The D_SPLIT warps of a (row tile, slice) have the same m and l; the first writes them.)
        if (t == 0 && dpart == 0) {
            m_s[cw * 16 + g] = m_run[0];
            m_s[cw * 16 + g + 8] = m_run[1];
            l_s[cw * 16 + g] = l_run[0];
            l_s[cw * 16 + g + 8] = l_run[1];
        }
        float* os = reinterpret_cast<float*>(smem + (i % STAGES) * STAGE_BYTES);
        store_warp_o(os + cw * O_WSTRIDE, o, g, t, dpart);
        copy_wait<STAGES - 2>();   // the next tile, with the next segment's Q, has landed
        __syncthreads();
        finish_rows<LO, O_WSTRIDE, O_SWZ>(m_s, l_s, os, flag_s, out, part_out, part_ml, counters,
                                          slot_start, cur.b, segment_part(cur),
                                          segment_parts(cur), num_heads, rows.h0, rows.nh,
                                          v_mult, DEFER_MERGE && cur.seg + 1 >= cur.last);
#if DEFER_MERGE   // the block's last segment: if it is the last part, merge after the loop
        defer_merge_of(flag_s, cur.seg + 1 >= cur.last, cur.b, segment_parts(cur));
#endif
        __syncthreads();   // the buffer, m_s and l_s are free again
        TL_TIME(3);
#if TIMELINE
        TL_MARK(4, tl_smid());
        TL_MARK(5, segment_parts(cur) > 1 ? flag_s[0] : 2);
        TL_MARK(6, i + 1);
#endif
        advance_tile(cur, segs);
        ++i;
    }
#if DEFER_MERGE
    merge_deferred(flag_s, smem, out, part_out, part_ml, slot_start, num_heads, rows.h0, rows.nh);
#endif
}

static_assert(!(HEADS_ON_X && SEPARATE_MERGE), "the merge launch's grid is (merges, row blocks)");

// The split sequences' merge as a second launch (-DSEPARATE_MERGE=1): block (i, y) merges
// sequence merges[2 i] (of merges[2 i + 1] parts) for the query heads of y; shared memory:
// rows_per_block x parts floats.
extern "C" __global__ void __launch_bounds__(TC_THREADS) paged_decode_mma_merge(
    const int* __restrict__ merges, const int* __restrict__ slot_start, KV_T* __restrict__ out,
    const float* __restrict__ part_out, const float* __restrict__ part_ml, int num_heads,
    int num_kv_heads, int rows_per_block)
{
    extern __shared__ float w[];
    const int b = merges[2 * blockIdx.x], nparts = merges[2 * blockIdx.x + 1];
    const DecodeRows rows = decode_rows(num_heads, num_kv_heads, rows_per_block);
    merge_parts(w, out, part_out, part_ml, (long long)b * num_heads + rows.h0,
                (long long)slot_start[b] * num_heads + rows.h0, nparts, num_heads, rows.nh);
}
