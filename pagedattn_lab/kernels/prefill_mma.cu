// Prefill on tensor cores over a paged KV cache, FlashAttention-2's inner loop on PTX
// `mma.sync.m16n8k16` (mma_ptx.cuh): the fast kernel `BatchPrefillWrapper` runs.
//
// Why a second kernel next to prefill_tc.cu: that one (the lesson's kernel) runs the same tile
// loop on WMMA, whose fragment layouts are unspecified; it learns them at run time, selects
// each element's row per element, and sends P through shared memory because WMMA cannot turn
// an accumulator into an A operand. mma.sync's layouts are documented (see mma_ptx.cuh), so
// here every lane knows at compile time that it holds rows g and g + 8 (g = lane / 4) and
// columns 2t, 2t + 1 (t = lane % 4) of each 16x8 accumulator tile: row maxima and sums are
// two quad shuffles (xor 1, 2), and the accumulators of two adjacent 8-key tiles of S, packed
// to 16 bits, ARE the A fragment of one 16-key chunk of P for O += P V. P never leaves the
// registers. Operands come from shared memory through ldmatrix: Q and K row-major
// (non-transposed: a K row is a column of the B operand K^T), V transposed (.trans).
// Shared rows are padded to HEAD_DIM + 8 elements: a row is then an odd number of 16-byte
// chunks long, so the 8 row addresses of one ldmatrix matrix fall in 8 different 16-byte
// bank groups (no conflicts, like a XOR swizzle, at 16 bytes a row of extra space).
//
// Everything around the inner products is prefill_tc.cu's, from the shared headers
// (prefill_tiles.cuh, prefill_tc_pipeline.cuh): the work items, packed rows and GQA packing,
// bottom-right causality, the K/V slot ring and its STAGES-deep cp.async pipeline with one
// barrier per tile, compressed pages dequantized while staged, zeros past the block's keys.
// Compile-time options as there (prefill_tc_params.cuh): HEAD_DIM, ELEM, WARPS, ROW_FRAGS,
// KV_TILE, STAGES, Q_IN_REGS, KV_QUANT, CACHE_T, PER_TOKEN_SCALES; the product loops are
// unrolled fully (QK_UNROLL, PV_UNROLL do not apply).
//
// Per warp (16 * ROW_FRAGS query rows) and K/V tile: S = Q K^T into KV_TILE / 8 accumulator
// tiles per row fragment; the mask, only on tiles some row of the warp does not see in full;
// the online softmax in log2 units (p = 2^(s * scale_log2 - m): a rounded product, then a
// subtraction, as in the decode kernels; see below); O rescaled only when some row's maximum
// moved (a warp vote: alpha is then exactly 1 elsewhere); O += P V into HEAD_DIM / 8
// accumulator tiles per row fragment, which stay in registers for the whole loop. A warp
// whose rows all precede a tile skips its arithmetic, never the barriers.

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include "common.cuh"
#include "kv_quant.cuh"
#include "mma_ptx.cuh"
#include "prefill_tc_params.cuh"

__device__ inline void from_float(float x, __half* p) { *p = __float2half(x); }
__device__ inline void from_float(float x, __nv_bfloat16* p) { *p = __float2bfloat16(x); }

#include "prefill_tc_pipeline.cuh"
#include "prefill_tiles.cuh"

#define FULL 0xffffffffu
#define N8 (KV_TILE / 8)            // 8-key accumulator tiles of S per row fragment
#define O8 (HEAD_DIM / 8)           // 8-column accumulator tiles of O per row fragment

// The element type's product and packing (ELEM is __half or __nv_bfloat16).
__device__ inline void mma(float acc[4], const unsigned a[4], const unsigned b[2], __half)
{
    mma_m16n8k16(acc, a, b, acc);
}
__device__ inline void mma(float acc[4], const unsigned a[4], const unsigned b[2], __nv_bfloat16)
{
    mma_m16n8k16_bf16(acc, a, b, acc);
}
__device__ inline unsigned pack2(float lo, float hi, __half) { return pack2_half(lo, hi); }
__device__ inline unsigned pack2(float lo, float hi, __nv_bfloat16) { return pack2_bf16(lo, hi); }

__device__ inline float quad_max(float x)
{
    x = fmaxf(x, __shfl_xor_sync(FULL, x, 1));
    return fmaxf(x, __shfl_xor_sync(FULL, x, 2));
}
__device__ inline float quad_sum(float x)
{
    x += __shfl_xor_sync(FULL, x, 1);
    return x + __shfl_xor_sync(FULL, x, 2);
}

extern "C" __global__ void __launch_bounds__(THREADS)
prefill_mma(const ELEM* __restrict__ q,            // [total_q, num_heads, HEAD_DIM]
            const CACHE_T* __restrict__ k_cache,   // [num_pages, page_size, kv_heads, HEAD_DIM]
            const CACHE_T* __restrict__ v_cache,
            const float* __restrict__ k_scale,     // compressed pages: see prefill_tc.cu
            const float* __restrict__ v_scale,
            const int* __restrict__ qo_indptr,     // [batch + 1]
            const int* __restrict__ block_tables,  // [batch, max_pages]
            const int* __restrict__ seq_lens,      // [batch]
            const int* __restrict__ work,          // [n_work][2]: sequence, first packed row
            ELEM* __restrict__ out,                // like q
            int num_heads, int num_kv_heads, int page_size, int max_pages, int causal,
            int pack,                              // query heads per block
            float scale_log2)                      // softmax scale * log2(e)
{
    // Shared memory: STAGES K/V stages, the Q tile, the slot ring (see
    // prefill_plan.shared_bytes).
    extern __shared__ __align__(16) unsigned char smem[];
    ELEM* const sh_kv = reinterpret_cast<ELEM*>(smem);
    ELEM* const sh_q = sh_kv + STAGES * STAGE_ELEMS;
    int* const sh_slots = reinterpret_cast<int*>(sh_q + Q_ROWS * LD_KV);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;

    const PrefillJob job = prefill_job(work, qo_indptr, seq_lens, block_tables, max_pages,
                                       num_heads, num_kv_heads, pack, causal);
    const WarpKeys wk = warp_keys(job, warp);
    int lim[ROW_FRAGS][2];          // the key limits of this lane's rows g, g + 8
#pragma unroll
    for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
        for (int h = 0; h < 2; ++h) lim[f][h] = job.key_limit(wk.first + f * 16 + g + 8 * h);

    KvPipeline kv = kv_pipeline(sh_kv, sh_slots, job, page_size, wk.kv_end, k_cache, v_cache,
                                k_scale, v_scale, num_kv_heads);
    stage_q(sh_q, q, job);
    kv.start();

    // This lane's ldmatrix row addresses (the matrices of an x4: lanes 8i .. 8i + 7 give
    // matrix i's rows). Q (A, x4 = rows 0-7 / 8-15 x columns 0-7 / 8-15 of a 16x16 block):
    // row lane % 16, column 8 * (lane / 16). K (B of S, x4 = two 8-key tiles x two 8-column
    // halves of 16 dims): key (lane & 7) + 8 * (lane / 16), column 8 * ((lane / 8) & 1).
    // V (B of P V, transposed, x4 = two 8-key halves of 16 keys x two 8-column tiles): key
    // lane % 16, column 8 * (lane / 16).
    const ELEM* const q_lane = sh_q + (warp * WARP_ROWS + (lane & 15)) * LD_KV + (lane >> 4) * 8;
    const int k_lane = ((lane & 7) + (lane >> 4) * 8) * LD_KV + ((lane >> 3) & 1) * 8;
    const int v_lane = (lane & 15) * LD_KV + (lane >> 4) * 8;

#if Q_IN_REGS
    copy_wait<STAGES - 1>();          // the Q tile has landed
    __syncthreads();
    unsigned q_frag[ROW_FRAGS][HEAD_DIM / 16][4];
#pragma unroll
    for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
        for (int kk = 0; kk < HEAD_DIM / 16; ++kk)
            ldmatrix_x4(q_frag[f][kk], q_lane + f * 16 * LD_KV + kk * 16);
#endif

    float o[ROW_FRAGS][O8][4];
#pragma unroll
    for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
        for (int n = 0; n < O8; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) o[f][n][i] = 0.0f;
    // Per row (fragment f, h: row g or g + 8): the running maximum (log2 units, equal in the
    // row's 4 lanes) and this lane's part of the running sum (the parts are added at the end).
    float m_run[ROW_FRAGS][2], l_run[ROW_FRAGS][2];
#pragma unroll
    for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
        for (int h = 0; h < 2; ++h) { m_run[f][h] = NEG_INF; l_run[f][h] = 0.0f; }

    for (int k0 = 0, tile = 0; k0 < wk.kv_end; k0 += KV_TILE, ++tile) {
        const ELEM* const k_tile = kv.begin_tile(tile, k0);
        const ELEM* const v_tile = k_tile + KV_TILE * LD_KV;
        if (wk.has_rows && k0 <= wk.max_lim) {   // warp-uniform

        // S = Q K^T: each K fragment (two 8-key tiles) feeds 2 * ROW_FRAGS products.
        float s[ROW_FRAGS][N8][4];
#pragma unroll
        for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
            for (int n = 0; n < N8; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i) s[f][n][i] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
#if Q_IN_REGS
            unsigned (&qa)[ROW_FRAGS][HEAD_DIM / 16][4] = q_frag;
            const int qi = kk;
#else
            unsigned qa[ROW_FRAGS][1][4];
            const int qi = 0;
#pragma unroll
            for (int f = 0; f < ROW_FRAGS; ++f)
                ldmatrix_x4(qa[f][0], q_lane + f * 16 * LD_KV + kk * 16);
#endif
#pragma unroll
            for (int n = 0; n < N8; n += 2) {
                unsigned kb[4];
                ldmatrix_x4(kb, k_tile + k_lane + n * 8 * LD_KV + kk * 16);
#pragma unroll
                for (int f = 0; f < ROW_FRAGS; ++f) {
                    mma(s[f][n], qa[f][qi], kb, ELEM());
                    mma(s[f][n + 1], qa[f][qi], kb + 2, ELEM());
                }
            }
        }

        // Online softmax on the accumulators. Element i of tile n is row g + 8 * (i / 2),
        // key k0 + 8n + 2t + i % 2.
        if (k0 + KV_TILE - 1 > wk.min_lim) {   // some key of the tile is hidden from some row
#pragma unroll
            for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
                for (int n = 0; n < N8; ++n)
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        if (k0 + n * 8 + 2 * t + (i & 1) > lim[f][i >> 1]) s[f][n][i] = NEG_INF;
        }
        bool moved = false;                  // did some row's maximum move (alpha != 1)?
        float alpha[ROW_FRAGS][2];
        unsigned p[ROW_FRAGS][N8][2];        // P as 16-bit pairs: rows g, g + 8
#pragma unroll
        for (int f = 0; f < ROW_FRAGS; ++f) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float mx = NEG_INF;
#pragma unroll
                for (int n = 0; n < N8; ++n)
                    mx = fmaxf(mx, fmaxf(s[f][n][2 * h], s[f][n][2 * h + 1]));
                const float m_new = fmaxf(m_run[f][h], quad_max(mx) * scale_log2);
                const float m_use = m_new == NEG_INF ? 0.0f : m_new;   // a row with no key yet
                alpha[f][h] = fast_exp2(m_run[f][h] - m_use);
                moved = moved || m_new != m_run[f][h];
                m_run[f][h] = m_new;
                float sum = 0.0f;
#pragma unroll
                for (int n = 0; n < N8; ++n) {
                    // Not fmaf(s, scale_log2, -m): its exact product misses the rounded m
                    // by up to half an ulp of m, so past |m| ~ 2^31 the row's largest score
                    // got 2^(+-hundreds): inf or 0, a NaN or inf row (fp16 q, k ~ 1e4).
                    // Rounded first, the largest score gives exactly 2^0, every other <= 1.
                    const float p0 = fast_exp2(__fmul_rn(s[f][n][2 * h], scale_log2) - m_use);
                    const float p1 = fast_exp2(__fmul_rn(s[f][n][2 * h + 1], scale_log2) - m_use);
                    sum += p0 + p1;
                    p[f][n][h] = pack2(p0, p1, ELEM());
                }
                l_run[f][h] = l_run[f][h] * alpha[f][h] + sum;
            }
        }
        if (__any_sync(FULL, moved)) {       // O *= alpha (exactly 1 when no row moved)
#pragma unroll
            for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
                for (int n = 0; n < O8; ++n)
#pragma unroll
                    for (int i = 0; i < 4; ++i) o[f][n][i] *= alpha[f][i >> 1];
        }

        // O += P V. The A fragment of keys 16c .. 16c + 15 is S's tiles 2c and 2c + 1:
        // a = {P[g][16c + 2t..], P[g + 8][16c + 2t..], P[g][16c + 8 + 2t..], P[g + 8][..]}.
        // Each V fragment (two 8-column tiles) feeds 2 * ROW_FRAGS products.
#pragma unroll
        for (int c = 0; c < KV_TILE / 16; ++c) {
#pragma unroll
            for (int n = 0; n < O8; n += 2) {
                unsigned vb[4];
                ldmatrix_x4_trans(vb, v_tile + v_lane + c * 16 * LD_KV + n * 8);
#pragma unroll
                for (int f = 0; f < ROW_FRAGS; ++f) {
                    const unsigned pa[4] = {p[f][2 * c][0], p[f][2 * c][1], p[f][2 * c + 1][0],
                                            p[f][2 * c + 1][1]};
                    mma(o[f][n], pa, vb, ELEM());
                    mma(o[f][n + 1], pa, vb + 2, ELEM());
                }
            }
        }
        }
        kv.end_tile(tile, k0);
    }

    if (!wk.has_rows) return;   // no barrier below
    // out = O / l, straight from the accumulators, 4 bytes (a column pair) at a time.
#pragma unroll
    for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int rho = wk.first + f * 16 + g + 8 * h;
            const float l = quad_sum(l_run[f][h]);
            const float inv = l > 0.0f ? 1.0f / l : 0.0f;
            if (rho >= job.rows_total) continue;
            unsigned* dst = reinterpret_cast<unsigned*>(out + job.row_offset(rho) + 2 * t);
#pragma unroll
            for (int n = 0; n < O8; ++n)
                dst[4 * n] = pack2(o[f][n][2 * h] * inv, o[f][n][2 * h + 1] * inv, ELEM());
        }
}
