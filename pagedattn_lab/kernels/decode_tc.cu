// Grouped decode on tensor cores: the query heads that share a KV head (a GQA group) are the
// rows of one matrix, so decode becomes two small matrix products per tile of the cache,
//
//   S = Q K^T   (rows x tokens)      O = softmax(S) V   (rows x head_dim)
//
// done with WMMA (mma.h: 16x16x16 tiles, fp16 or bf16 inputs, fp32 accumulators). Each K and
// V tile is read from memory once for the whole group, however many heads it has.
//
// Thread-to-data mapping (kernel paged_decode_tc):
//   grid  = (work items, num_kv_heads * row_chunks); block = TC_WARPS warps.
//   A work item is one partition of one sequence: tokens [part * part_len, min(seq_len,
//   (part + 1) * part_len)) (split-K, as in flash-decoding). The plan lists the items, so no
//   block is launched for a partition past the end of a short sequence.
//   blockIdx.y picks the KV head and which of its query heads are the rows of Q: up to
//   16 * ROW_TILES of them (a larger group is split over row_chunks blocks). Rows past the
//   group are zero and their results are dropped.
//   The partition streams through shared memory in tiles of TILE_T tokens, STAGES tiles in
//   flight (cp.async: the copies bypass registers, so loads stay in flight while warps
//   compute; the block-table entries of a tile are read one iteration before its copies).
//   One barrier per tile; between barriers each warp works alone on its share: warp w
//   (cw = w % (TC_WARPS / D_SPLIT)) takes row tile cw % ROW_TILES (16 query heads) and the
//   cw / ROW_TILES-th slice of TW tokens of the tile, and keeps its own online softmax:
//     1. S = Q K^T for its 16 rows x TW tokens (HEAD_DIM / 16 mma_sync steps per 16 tokens),
//        stored to the warp's own shared memory (fp32);
//     2. softmax, two lanes per row: scale, mask tokens past the end, new running max m,
//        alpha = 2^(m_old - m_new), P = 2^(S - m) in fp16/bf16, the row sums;
//     3. O = alpha * O + P V: the warp's 16 x (HEAD_DIM / D_SPLIT) accumulator fragments
//        stay in registers for the whole partition. D_SPLIT > 1: that many warps share a
//        (row tile, slice), each computes S and the softmax (the same values) and keeps
//        its own 1/D_SPLIT of O's columns: fewer registers per warp, more warps per SM.
//   WARP_PIPE=1 (one row tile, D_SPLIT 1): no barrier in the loop at all; each warp copies,
//   waits for (and converts) only its own tokens, in stages of its own.
//   WMMA does not say which element of a fragment a thread holds. To scale row r of O by its
//   alpha, the kernel loads, once, an accumulator fragment from a matrix whose every element
//   is its own row number: element e of any accumulator fragment is then in row rowid.x[e].
//   At the end the warps that share a row tile merge their (m, l, O) through shared memory
//   (as split-K does), and the block writes O / l; a sequence cut into several partitions
//   writes the partial state (O / l, m, l) in fp32 instead, and the last of its blocks to
//   finish (an atomic counter) merges them: out = sum_p w_p O_p, w_p = l_p 2^(m_p - M) / sum.
//
// Compressed pages (kv_quant.cuh; the same options as prefill_tc.cu): KV_QUANT (0 none,
// 1 int8, 2 fp8 e4m3), CACHE_T (the cache element: KV_T, or unsigned char for codes),
// PER_TOKEN_SCALES (0: k_scale/v_scale are [num_kv_heads]; 1: [num_pages * page_size *
// num_kv_heads], index slot * num_kv_heads + kv_head with slot = page * page_size + offset).
// The copies stay asynchronous: raw codes (16 per 16-byte copy) land in shared memory, and
// whoever copied them (the block, or the warp with WARP_PIPE) converts them once to KV_T
// (exact: every int8 and e4m3 code is a 16-bit float), a second barrier per tile. The
// scales stay in fp32:
// static ones fold into the logit scale (K) and the output (V); per-token ones multiply the
// token's logit (K) and its probability in P (V), not the row sum l.
//
// Compile-time parameters (NVRTC -D; one source instantiated per case): KV_T (and KV_BF16),
// HEAD_DIM (a multiple of 16), TC_WARPS (warps per block), D_SPLIT (warps per row tile and
// slice, dividing HEAD_DIM / 16), ROW_TILES (1, 2 or 4), TILE_T (tokens per tile: each warp
// takes TW = TILE_T * ROW_TILES * D_SPLIT / TC_WARPS, a multiple of 16), STAGES (>= 2),
// S_CHAINS (1 or 2 independent accumulators for S = QK^T), TC_MIN_BLOCKS (blocks per SM the
// register allocation must allow), WARP_PIPE, and the three above (decode_plan.tc_config
// makes a consistent set). Logits are in base 2 (scale_log2 = scale * log2 e); cache
// offsets are 64-bit.

#include "common.cuh"
#include "kv_quant.cuh"
#include "kv_convert.cuh"
#include <mma.h>

#include "decode_tc_sizes.cuh"
#include "decode_tc_layout.cuh"
#include "decode_tc_tiles.cuh"
#include "decode_tc_merge.cuh"
static_assert(!HEADS_ON_X, "decode_tc.cu reads its work from blockIdx.x, its rows from y");

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS) paged_decode_tc(
    const KV_T* __restrict__ q,            // [batch, num_heads, HEAD_DIM]
    const CACHE_T* __restrict__ k_cache,   // [num_pages, page_size, num_kv_heads, HEAD_DIM]
    const CACHE_T* __restrict__ v_cache,
    const float* __restrict__ k_scale,     // compressed pages: see the header (else unread)
    const float* __restrict__ v_scale,
    const int* __restrict__ block_tables,  // [batch, max_pages]
    const int* __restrict__ seq_lens,      // [batch]
    const int* __restrict__ work,          // [items, 2]: (sequence, partition)
    const int* __restrict__ slot_start,    // [batch]: the sequence's first partial-state slot
    KV_T* __restrict__ out,                // [batch, num_heads, HEAD_DIM]
    float* __restrict__ part_out,          // [slots, num_heads, HEAD_DIM]  (O / l)
    float* __restrict__ part_ml,           // [slots, num_heads, 2]         (m, l)
    int* __restrict__ counters,            // [batch, gridDim.y]: 0 between launches
    int num_heads, int num_kv_heads, int page_size, int page_shift, int max_pages,
    int part_len, int rows_per_block, float scale_log2)
{
    extern __shared__ __align__(128) unsigned char smem[];
    KV_T* qs = reinterpret_cast<KV_T*>(smem + Q_OFF);
    float* rowid_s = reinterpret_cast<float*>(smem + ROWID_OFF);
    int* flag_s = reinterpret_cast<int*>(smem + FLAG_OFF);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // this warp's rows and tokens (cw), and which DT column tiles of O it accumulates
    const int cw = warp % CWARPS, dpart = warp / CWARPS;
    const int rt = cw % ROW_TILES, slice = cw / ROW_TILES;
    float* ss = reinterpret_cast<float*>(smem + S_OFF) + warp * 16 * LSW;
    KV_T* ps = reinterpret_cast<KV_T*>(smem + P_OFF) + warp * 16 * LPW;
    float* alpha_s = reinterpret_cast<float*>(smem + ALPHA_OFF) + warp * 16;
    float* m_s = reinterpret_cast<float*>(smem + M_OFF);
    float* l_s = reinterpret_cast<float*>(smem + L_OFF);

    const int b = work[2 * blockIdx.x], part = work[2 * blockIdx.x + 1];
    const int seq_len = seq_lens[b];
    const int start = part * part_len;
    const int end = min(seq_len, start + part_len);
    const int nparts = (seq_len + part_len - 1) / part_len;
    const int ntiles = (end - start + TILE_T - 1) / TILE_T;
    const int group = num_heads / num_kv_heads;
    const int chunks = gridDim.y / num_kv_heads;
    const int kvh = blockIdx.y / chunks;
    const int h0 = kvh * group + (blockIdx.y % chunks) * rows_per_block;   // first query head
    const int nh = min(rows_per_block, kvh * group + group - h0);          // query heads here

    const int* table = block_tables + (long long)b * max_pages;
    const long long row_stride = (long long)num_kv_heads * HEAD_DIM;
    const long long page_stride = (long long)page_size * row_stride;
    const long long head_off = (long long)kvh * HEAD_DIM;
    int pg[TILE_COPIES];

    // The first STAGES - 1 tiles start loading before anything else. Every thread commits
    // one group per tile, an empty one past the last tile too, so that "wait until at most
    // N groups are in flight" means the same tile for every thread.
#if WARP_PIPE
    const int copier = warp, cid = lane, cp_off = slice * TW;   // the warp copies its tokens
#else
    const int copier = 0, cid = threadIdx.x, cp_off = 0;        // the block copies the tile
#endif
    unsigned char* stages = smem + copier * STAGES * STAGE_BYTES;
    float* scales = reinterpret_cast<float*>(smem + SC_OFF) + copier * STAGES * 2 * CP_TOKENS;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ntiles) {
            tile_pages(pg, table, start + s * TILE_T + cp_off, end, page_size, page_shift, cid);
            copy_tile(stages + s * STAGE_BYTES, scales + s * 2 * CP_TOKENS, k_cache, v_cache,
                      k_scale, v_scale, pg, start + s * TILE_T + cp_off, page_size, page_shift,
                      page_stride, row_stride, head_off, cid);
        }
        copy_commit();
    }
    if (STAGES - 1 < ntiles)
        tile_pages(pg, table, start + (STAGES - 1) * TILE_T + cp_off, end, page_size,
                   page_shift, cid);
#if KV_QUANT && !PER_TOKEN_SCALES
    scale_log2 *= k_scale[kvh];            // static scales: K's folds into the logits,
    const float v_mult = v_scale[kvh];     // V's into the output
#else
    const float v_mult = 1.0f;
#endif

    // Q: the block's query heads as rows, zero rows below them.
    constexpr int QCHUNKS = HEAD_DIM * 2 / 16;
    for (int c = threadIdx.x; c < ROWS * QCHUNKS; c += TC_THREADS) {
        const int r = c / QCHUNKS, col = c % QCHUNKS;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r < nh)
            v = *reinterpret_cast<const uint4*>(
                q + ((long long)b * num_heads + h0 + r) * HEAD_DIM + col * 8);
        *reinterpret_cast<uint4*>(qs + r * LD + col * 8) = v;
    }
    for (int i = threadIdx.x; i < 256; i += TC_THREADS) rowid_s[i] = (float)(i / 16);
    __syncthreads();
    acc_frag rowid;   // element e of every accumulator fragment lies in row rowid.x[e]
    wmma::load_matrix_sync(rowid, rowid_s, 16, wmma::mem_row_major);

    acc_frag o[DT];
#pragma unroll
    for (int j = 0; j < DT; ++j) wmma::fill_fragment(o[j], 0.0f);
    const int row = lane / 2, col0 = (lane % 2) * CPL;   // this lane's softmax row and columns
    float m_run = NEG_BIG, l_run = 0.0f;   // the row's running max; this lane's share of its sum
    const KV_T* q_rows = qs + rt * 16 * LD;

    for (int i = 0; i < ntiles; ++i) {
        const int nt = i + STAGES - 1;   // the tile to start now, into the buffer of tile i - 1
        copy_wait<STAGES - 2>();   // tile i has landed (this thread's copies) ...
#if WARP_PIPE
        __syncwarp();              // ... the warp's; and the warp is done with tile i - 1
#else
        __syncthreads();           // ... everyone's; and every warp is done with tile i - 1
#endif
        if (nt < ntiles)           // (its page ids were read during the last iteration)
            copy_tile(stages + (nt % STAGES) * STAGE_BYTES, scales + (nt % STAGES) * 2 * CP_TOKENS,
                      k_cache, v_cache, k_scale, v_scale, pg, start + nt * TILE_T + cp_off,
                      page_size, page_shift, page_stride, row_stride, head_off, cid);
        copy_commit();
        if (nt + 1 < ntiles)
            tile_pages(pg, table, start + (nt + 1) * TILE_T + cp_off, end, page_size,
                       page_shift, cid);
        const unsigned char* stage = stages + (i % STAGES) * STAGE_BYTES;
#if KV_QUANT
        // the copier converts its codes once (the warps of a row tile or a D_SPLIT group
        // share tokens), then every warp reads its tokens
        KV_T* kv = reinterpret_cast<KV_T*>(smem + WKV_OFF) + copier * 2 * CP_TOKENS * LD;
        convert_tile(kv, stage, cid);
#if WARP_PIPE
        __syncwarp();
#else
        __syncthreads();
#endif
#else
        const KV_T* kv = reinterpret_cast<const KV_T*>(stage);
#endif
        const KV_T* ks = kv + (slice * TW - cp_off) * LD;   // this warp's tokens
        const KV_T* vs = ks + CP_TOKENS * LD;

        // 1. S = Q K^T for this warp's 16 rows and TW tokens (K^T is K read column-major);
        // S_CHAINS independent accumulators halve the chain of dependent products.
#pragma unroll
        for (int ct = 0; ct < TW / 16; ++ct) {
            acc_frag s[S_CHAINS];
#pragma unroll
            for (int c = 0; c < S_CHAINS; ++c) wmma::fill_fragment(s[c], 0.0f);
#pragma unroll
            for (int k = 0; k < D_TILES; ++k) {
                a_frag a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, KV_T, wmma::col_major> bk;
                wmma::load_matrix_sync(a, q_rows + k * 16, LD);
                wmma::load_matrix_sync(bk, ks + ct * 16 * LD + k * 16, LD);
                wmma::mma_sync(s[k % S_CHAINS], a, bk, s[k % S_CHAINS]);
            }
#pragma unroll
            for (int c = 1; c < S_CHAINS; ++c) {
#pragma unroll
                for (int e = 0; e < s[0].num_elements; ++e) s[0].x[e] += s[c].x[e];
            }
            wmma::store_matrix_sync(ss + ct * 16, s[0], LSW, wmma::mem_row_major);
        }
        __syncwarp();

        // 2. online softmax, two lanes per row
        const int t0 = start + i * TILE_T + slice * TW + col0;
#if KV_QUANT && PER_TOKEN_SCALES
        const float* ksc = scales + (i % STAGES) * 2 * CP_TOKENS + slice * TW - cp_off + col0;
        const float* vsc = ksc + CP_TOKENS;
#endif
        float sv[CPL];
        float mx = NEG_BIG;
#pragma unroll
        for (int j = 0; j < CPL; ++j) {
            float x = ss[row * LSW + col0 + j] * scale_log2;
#if KV_QUANT && PER_TOKEN_SCALES
            x *= ksc[j];
#endif
            sv[j] = t0 + j < end ? x : NEG_INF;
            mx = fmaxf(mx, sv[j]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        const float m_new = fmaxf(m_run, mx);
        const float alpha = exp2f(m_run - m_new);
        m_run = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < CPL; ++j) {
            const float p = exp2f(sv[j] - m_new);   // 0 for a masked token
            sum += p;
#if KV_QUANT && PER_TOKEN_SCALES
            store_value(ps + row * LPW + col0 + j, p * vsc[j]);   // V's scale, not in l
#else
            store_value(ps + row * LPW + col0 + j, p);
#endif
        }
        l_run = l_run * alpha + sum;
        if (lane % 2 == 0) alpha_s[row] = alpha;
        __syncwarp();

        // 3. O = alpha * O + P V (each element's alpha read once, for all DT fragments)
        float alpha_e[acc_frag::num_elements];
#pragma unroll
        for (int e = 0; e < o[0].num_elements; ++e) alpha_e[e] = alpha_s[(int)rowid.x[e]];
#pragma unroll
        for (int j = 0; j < DT; ++j) {
#pragma unroll
            for (int e = 0; e < o[j].num_elements; ++e) o[j].x[e] *= alpha_e[e];
        }
#pragma unroll
        for (int k = 0; k < TW / 16; ++k) {
            a_frag a;
            wmma::load_matrix_sync(a, ps + k * 16, LPW);
#pragma unroll
            for (int j = 0; j < DT; ++j) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, KV_T, wmma::row_major> bv;
                wmma::load_matrix_sync(bv, vs + k * 16 * LD + (dpart * DT + j) * 16, LD);
                wmma::mma_sync(o[j], a, bv, o[j]);
            }
        }
        __syncwarp();   // alpha_s and ps are rewritten by the next tile
    }
    copy_wait<0>();
    // Each warp's (m, l) per row and its O to shared memory (where the K/V tiles were).
    // (The D_SPLIT warps of a (row tile, slice) have the same m and l; the first writes them.)
    const float l_row = l_run + __shfl_xor_sync(0xffffffffu, l_run, 1);
    if (lane % 2 == 0 && dpart == 0) {
        m_s[cw * 16 + row] = m_run;
        l_s[cw * 16 + row] = l_row;
    }
    __syncthreads();   // every warp is done with the last tile
    float* os = reinterpret_cast<float*>(smem);   // [CWARPS][16][LO]
#pragma unroll
    for (int j = 0; j < DT; ++j)
        wmma::store_matrix_sync(os + cw * 16 * LO + (dpart * DT + j) * 16, o[j], LO,
                                wmma::mem_row_major);
    __syncthreads();

    finish_block(m_s, l_s, os, flag_s, out, part_out, part_ml, counters, slot_start, b, part,
                 nparts, num_heads, h0, nh, v_mult);
}
