// Prefill on tensor cores (FlashAttention-2 style) over a paged KV cache, for packed,
// variable-length batches: all-new prompts, chunks over a cached prefix and single decode
// tokens in one launch. The tile loop is the one of the step-4 tiled kernel; the two inner
// products, S = Q K^T and O += P V, run on WMMA (16x16x16, fp16/bf16 in, fp32 accumulate).
//
// Compile-time: HEAD_DIM (a multiple of 16), ELEM (__half or __nv_bfloat16), WARPS,
// ROW_FRAGS (16-row fragments per warp: a warp owns 16 * ROW_FRAGS query rows, so every K or
// V fragment it loads from shared memory feeds ROW_FRAGS products), KV_TILE (keys per K/V
// tile, a multiple of 16), STAGES (K/V tiles in shared memory: the one computed on and
// STAGES - 1 in flight), Q_IN_REGS (1: the warp's Q fragments stay in registers; 0: they
// are reloaded from shared memory for every K/V tile, which frees registers for larger tiles).
// Compressed pages (kv_quant.cuh): KV_QUANT (0 none, 1 int8, 2 fp8 e4m3), CACHE_T (the
// cache element: ELEM, or unsigned char for codes), PER_TOKEN_SCALES (0: k_scale/v_scale are
// [num_kv_heads]; 1: [num_pages, page_size, num_kv_heads], like the pages). Codes are
// dequantized (code * scale, rounded to ELEM) as a tile is staged into shared memory, so
// the tensor-core loop is the same for every format; the scales are unused when KV_QUANT=0.
//
// Thread-to-data mapping: grid = (work items, num_heads / pack). A block's rows are "packed
// rows" rho = query * pack + h: with pack = 1 a block serves one head (blockIdx.y); with
// pack = num_heads / num_kv_heads (GQA packing, for decode-like sequences) it serves every
// query head of one KV head, so each K/V tile read serves them all. A work item (from the
// wrapper's plan) is a run of Q_ROWS = 16 * ROW_FRAGS * WARPS consecutive packed rows of one
// sequence; warp w owns 16 * ROW_FRAGS of them. All threads copy each K/V tile from its
// pages into shared memory (16-byte copies, zeros past the keys the block reads: a masked
// key times a NaN left in an unused slot would still be NaN), STAGES tiles deep: the
// copies of tiles i+1 .. i+STAGES-1 are in flight (cp.async on sm_80+) while tile i is
// computed. One barrier per tile: after it, every warp is done with tile i-1, whose stage
// then takes tile i+STAGES-1. Each key's cache slot is looked up once, a tile ahead (the
// block-table load is in flight while the tile before is computed), into a small shared ring,
// so a 16-byte copy costs a shared load and an address. This tile loop (work items, key
// limits, the slot ring and the copies) is in prefill_tiles.cuh, shared with prefill_mma.cu,
// the same algorithm on mma.sync (what BatchPrefillWrapper runs; see its header for why).
//
// Per tile a warp computes its S block into accumulator fragments, runs the online softmax on
// those fragments in registers, writes P (ELEM) to its private shared scratch, reloads it as
// A fragments (WMMA has no accumulator-to-A conversion) and adds P V into the O fragments,
// which stay in registers for the whole loop.
//
// A fragment's element-to-(row, column) mapping is unspecified by WMMA, so the kernel
// learns it (fragment_layout.cuh): each warp loads 16x16 matrices holding their own row and column numbers into
// accumulator fragments. From them every lane knows, for each of its elements, the row
// (one of at most two rows a lane holds: "slot" 0 or 1) and the column, and which lanes
// share its rows (the xor masks `share`: row maxima and sums combine over those lanes with
// shuffles). Elements are used in pairs (2k, 2k+1) of adjacent columns of one row, so P and
// the output are written 4 bytes at a time. The kernel checks these properties once and
// traps if a GPU (or the CPU executor) breaks them; the same code then runs everywhere.
//
// Causality is bottom-right: query i of a sequence with q_len queries and seq_len cached
// tokens (the new ones included) sees keys 0 .. seq_len - q_len + i. Tiles wholly past a
// block's last query are never loaded; a warp whose rows all precede a tile skips its
// arithmetic (but not the barriers, which every thread reaches); tiles every row of a warp
// sees in full skip the mask.

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>
#include "common.cuh"
#include "kv_quant.cuh"
#include "fragment_layout.cuh"

#include "prefill_tc_params.cuh"

using namespace nvcuda;

__device__ inline void from_float(float x, __half* p) { *p = __float2half(x); }
__device__ inline void from_float(float x, __nv_bfloat16* p) { *p = __float2bfloat16(x); }

// Two floats rounded to ELEM and stored as one 4-byte word (dst 4-byte aligned).
__device__ inline void store_pair(__half* dst, float a, float b)
{
    *reinterpret_cast<__half2*>(dst) = __floats2half2_rn(a, b);
}
__device__ inline void store_pair(__nv_bfloat16* dst, float a, float b)
{
    *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(a, b);
}

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, ELEM, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, ELEM, wmma::col_major> FragKT;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, ELEM, wmma::row_major> FragV;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;
#define NE FragC::num_elements

struct Shared {                    // carved out of the dynamic shared memory
    ELEM* kv;                      // STAGES stages of STAGE_ELEMS: K [KV_TILE][LD_KV], V
    ELEM* q;                       // [Q_ROWS][LD_KV]
    ELEM* p;                       // per warp [WARP_ROWS][LD_P]; first the layout scratch
};

__device__ inline Shared carve(unsigned char* base)
{
    Shared sh;
    sh.kv = reinterpret_cast<ELEM*>(base);
    sh.q = sh.kv + STAGES * STAGE_ELEMS;
    sh.p = sh.q + Q_ROWS * LD_KV;
    return sh;
}

#include "prefill_tc_pipeline.cuh"
#include "prefill_tiles.cuh"

extern "C" __global__ void __launch_bounds__(THREADS)
prefill_tc(const ELEM* __restrict__ q,            // [total_q, num_heads, HEAD_DIM]
           const CACHE_T* __restrict__ k_cache,   // [num_pages, page_size, kv_heads, HEAD_DIM]
           const CACHE_T* __restrict__ v_cache,
           const float* __restrict__ k_scale,     // compressed pages: see the header
           const float* __restrict__ v_scale,
           const int* __restrict__ qo_indptr,     // [batch + 1]
           const int* __restrict__ block_tables,  // [batch, max_pages]
           const int* __restrict__ seq_lens,      // [batch]
           const int* __restrict__ work,          // [n_work][2]: sequence, first packed row
           ELEM* __restrict__ out,                // like q
           int num_heads, int num_kv_heads, int page_size, int max_pages, int causal,
           int pack,                              // query heads per block (see the header)
           float scale_log2)                      // softmax scale * log2(e)
{
    extern __shared__ __align__(16) unsigned char smem[];
    Shared sh = carve(smem);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    ELEM* p_w = sh.p + warp * WARP_ROWS * LD_P;

    const Layout L = learn_layout(reinterpret_cast<float*>(p_w), lane);

    const PrefillJob job = prefill_job(work, qo_indptr, seq_lens, block_tables, max_pages,
                                       num_heads, num_kv_heads, pack, causal);
    const WarpKeys wk = warp_keys(job, warp);
    int lim[ROW_FRAGS][2];
#pragma unroll
    for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
        for (int s = 0; s < 2; ++s) lim[f][s] = job.key_limit(wk.first + f * 16 + L.row[s]);

    // The Q tile, then the K/V pipeline (prefill_tiles.cuh): the slot ring after the warps'
    // P scratch (see prefill_plan.shared_bytes).
    KvPipeline kv = kv_pipeline(sh.kv, reinterpret_cast<int*>(sh.p + WARPS * WARP_ROWS * LD_P),
                                job, page_size, wk.kv_end, k_cache, v_cache, k_scale, v_scale,
                                num_kv_heads);
    stage_q(sh.q, q, job);
    kv.start();
    const ELEM* q_w = sh.q + warp * WARP_ROWS * LD_KV;
#if Q_IN_REGS
    copy_wait<STAGES - 1>();          // the Q tile has landed
    __syncthreads();
    FragA q_frag[ROW_FRAGS][D_FRAGS];
#pragma unroll
    for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
        for (int d = 0; d < D_FRAGS; ++d)
            wmma::load_matrix_sync(q_frag[f][d], q_w + f * 16 * LD_KV + d * 16, LD_KV);
#endif

    FragC o_frag[ROW_FRAGS][D_FRAGS];
#pragma unroll
    for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
        for (int d = 0; d < D_FRAGS; ++d) wmma::fill_fragment(o_frag[f][d], 0.0f);
    // Per row (fragment f, slot s): the running max (log2 units, shared by the row's lanes)
    // and this lane's part of the running sum (the lanes' parts are added at the end).
    float m_run[ROW_FRAGS][2], l_run[ROW_FRAGS][2];
#pragma unroll
    for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
        for (int s = 0; s < 2; ++s) { m_run[f][s] = NEG_INF; l_run[f][s] = 0.0f; }

    for (int k0 = 0, tile = 0; k0 < wk.kv_end; k0 += KV_TILE, ++tile) {
        const ELEM* k_tile = kv.begin_tile(tile, k0);
        const ELEM* v_tile = k_tile + KV_TILE * LD_KV;
        if (wk.has_rows && k0 <= wk.max_lim) {   // warp-uniform

        // S = Q K^T: each K fragment feeds ROW_FRAGS products.
        FragC s_frag[ROW_FRAGS][K_FRAGS];
#pragma unroll
        for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
            for (int n = 0; n < K_FRAGS; ++n) wmma::fill_fragment(s_frag[f][n], 0.0f);
        UNROLL(QK_UNROLL)
        for (int d = 0; d < D_FRAGS; ++d) {
#if !Q_IN_REGS
            FragA q_d[ROW_FRAGS];
#pragma unroll
            for (int f = 0; f < ROW_FRAGS; ++f)
                wmma::load_matrix_sync(q_d[f], q_w + f * 16 * LD_KV + d * 16, LD_KV);
#endif
#pragma unroll
            for (int n = 0; n < K_FRAGS; ++n) {
                FragKT k_frag;
                wmma::load_matrix_sync(k_frag, k_tile + n * 16 * LD_KV + d * 16, LD_KV);
#pragma unroll
                for (int f = 0; f < ROW_FRAGS; ++f)
#if Q_IN_REGS
                    wmma::mma_sync(s_frag[f][n], q_frag[f][d], k_frag, s_frag[f][n]);
#else
                    wmma::mma_sync(s_frag[f][n], q_d[f], k_frag, s_frag[f][n]);
#endif
            }
        }

        // Online softmax on the fragments: mask (only where some key is hidden from some
        // row of the warp), row maxima over the lanes sharing a row, then
        // P = 2^(s * scale_log2 - m) with m in log2 units, the product rounded before the
        // subtraction (as prefill_mma.cu says why: an FFMA overflows past |m| ~ 2^31).
        const bool masked = k0 + KV_TILE - 1 > wk.min_lim;
        bool moved = false;                  // did some row's maximum move (alpha != 1)?
        float alpha[ROW_FRAGS][2];
#pragma unroll
        for (int f = 0; f < ROW_FRAGS; ++f) {
            float mx[2] = {NEG_INF, NEG_INF};
            if (masked) {   // a loop of its own, so that unmasked tiles branch around it
#pragma unroll
                for (int n = 0; n < K_FRAGS; ++n)
#pragma unroll
                    for (int i = 0; i < NE; ++i) {
                        const int s = (L.slot1 >> i) & 1;
                        if (k0 + n * 16 + elem_col(L, i) > pick(s, lim[f][0], lim[f][1]))
                            s_frag[f][n].x[i] = NEG_INF;
                    }
            }
#pragma unroll
            for (int n = 0; n < K_FRAGS; ++n)
#pragma unroll
                for (int i = 0; i < NE; ++i) {
                    const float x = s_frag[f][n].x[i];
                    if ((L.slot1 >> i) & 1) mx[1] = fmaxf(mx[1], x); else mx[0] = fmaxf(mx[0], x);
                }
            float m_use[2];
#pragma unroll
            for (int s = 0; s < 2; ++s) {
                float m_new = fmaxf(m_run[f][s], group_max(mx[s], L.share) * scale_log2);
                m_use[s] = m_new == NEG_INF ? 0.0f : m_new;           // a row with no key yet
                alpha[f][s] = fast_exp2(m_run[f][s] - m_use[s]);
                moved = moved || m_new != m_run[f][s];
                m_run[f][s] = m_new;
                l_run[f][s] *= alpha[f][s];
            }
#pragma unroll
            for (int n = 0; n < K_FRAGS; ++n)
#pragma unroll
                for (int i = 0; i < NE; i += 2) {
                    const int s = (L.slot1 >> i) & 1;
                    const float m = pick(s, m_use[0], m_use[1]);
                    float p0 = fast_exp2(__fmul_rn(s_frag[f][n].x[i], scale_log2) - m);
                    float p1 = fast_exp2(__fmul_rn(s_frag[f][n].x[i + 1], scale_log2) - m);
                    if (s) l_run[f][1] += p0 + p1; else l_run[f][0] += p0 + p1;
                    store_pair(p_w + (f * 16 + pick(s, L.row[0], L.row[1])) * LD_P + n * 16
                               + elem_col(L, i), p0, p1);
                }
        }
        // O *= alpha, skipped (exactly: alpha is 1) when no row of the warp has a new
        // maximum, as in most tiles of a long row.
        if (__any_sync(LAYOUT_FULL, moved)) {
#pragma unroll
            for (int f = 0; f < ROW_FRAGS; ++f)
#pragma unroll
                for (int d = 0; d < D_FRAGS; ++d)
#pragma unroll
                    for (int i = 0; i < NE; ++i)
                        o_frag[f][d].x[i] *= pick((L.slot1 >> i) & 1, alpha[f][0], alpha[f][1]);
        }
        __syncwarp();

        // O += P V: each V fragment feeds ROW_FRAGS products.
        UNROLL(PV_UNROLL)
        for (int n = 0; n < K_FRAGS; ++n) {
            FragA p_frag[ROW_FRAGS];
#pragma unroll
            for (int f = 0; f < ROW_FRAGS; ++f)
                wmma::load_matrix_sync(p_frag[f], p_w + f * 16 * LD_P + n * 16, LD_P);
#pragma unroll
            for (int d = 0; d < D_FRAGS; ++d) {
                FragV v_frag;
                wmma::load_matrix_sync(v_frag, v_tile + n * 16 * LD_KV + d * 16, LD_KV);
#pragma unroll
                for (int f = 0; f < ROW_FRAGS; ++f)
                    wmma::mma_sync(o_frag[f][d], p_frag[f], v_frag, o_frag[f][d]);
            }
        }
        }
        kv.end_tile(tile, k0);
        __syncwarp();   // p_w is rewritten in the next tile
    }

    if (!wk.has_rows) return;   // no barrier below
    // out = O / l, written straight from the fragments, 4 bytes (a pair) at a time.
#pragma unroll
    for (int f = 0; f < ROW_FRAGS; ++f) {
        float inv[2];
        int rho[2];
#pragma unroll
        for (int s = 0; s < 2; ++s) {
            float l = group_sum(l_run[f][s], L.share);
            inv[s] = l > 0.0f ? 1.0f / l : 0.0f;
            rho[s] = wk.first + f * 16 + L.row[s];
        }
#pragma unroll
        for (int i = 0; i < NE; i += 2) {
            const int s = (L.slot1 >> i) & 1;
            const int r = pick(s, rho[0], rho[1]);
            if (r >= job.rows_total) continue;
            ELEM* dst = out + job.row_offset(r) + elem_col(L, i);
#pragma unroll
            for (int d = 0; d < D_FRAGS; ++d)
                store_pair(dst + d * 16, o_frag[f][d].x[i] * pick(s, inv[0], inv[1]),
                           o_frag[f][d].x[i + 1] * pick(s, inv[0], inv[1]));
        }
    }
}
