// Prefill on tensor cores (FlashAttention-2 style) over a paged KV cache, for packed,
// variable-length batches: all-new prompts, chunks over a cached prefix and single decode
// tokens in one launch. The tile loop is the one of the step-4 tiled kernel; the two inner
// products, S = Q K^T and O += P V, run on WMMA (16x16x16, fp16/bf16 in, fp32 accumulate).
//
// Compile-time: HEAD_DIM (a multiple of 16), ELEM (__half or __nv_bfloat16), WARPS (query
// rows per block = 16 * WARPS), KV_TILE (keys per K/V tile, a multiple of 32).
// Compressed pages (kv_quant.cuh): KV_QUANT (0 none, 1 int8, 2 fp8 e4m3), CACHE_T (the
// cache element: ELEM, or unsigned char for codes), PER_TOKEN_SCALES (0: k_scale/v_scale are
// [num_kv_heads]; 1: [num_pages, page_size, num_kv_heads], like the pages). Codes are
// dequantized (code * scale, rounded to ELEM) as a tile is staged into shared memory, so
// the tensor-core loop is the same for every format; the scales are unused when KV_QUANT=0.
//
// Thread-to-data mapping: grid = (work items, num_heads). A work item (from the wrapper's
// plan) is one tile of 16*WARPS consecutive new tokens of one sequence; warp w owns rows
// 16w..16w+15 of the tile. All threads copy each K/V tile from its pages into shared
// memory (16-byte copies, zeros past the end of the sequence: a masked key times a NaN
// left in an unused slot would still be NaN), two tiles deep: the copy of tile i+1 is in
// flight (cp.async on sm_80+) while tile i is computed. Each warp then computes its
// 16 x KV_TILE block of S on tensor cores and stores it to its private shared scratch;
// lane pairs (lane = 2 * row + half) run the online softmax on one row each, write P (in
// ELEM) and the row's rescale factor alpha (a lane takes every other column, so the
// two lanes of a pair hit different banks); the warp scales its O fragments by alpha and
// adds P V on tensor cores. O stays in accumulator fragments for the whole loop.
//
// A fragment's element-to-(row, column) mapping is unspecified by WMMA, so the kernel
// learns it: at the start each warp loads a 16x16 matrix whose entries are their own row
// numbers into an accumulator fragment, which tells every lane the row of each of its
// elements. Rescaling a row of O is then "x[i] *= alpha[row_of[i]]", on any GPU and on the
// CPU executor alike.
//
// Causality is bottom-right: query i of a sequence with q_len queries and seq_len cached
// tokens (the new ones included) sees keys 0 .. seq_len - q_len + i. Tiles wholly past a
// block's last query are never loaded; a warp whose rows all precede a tile skips its
// arithmetic (but not the barriers, which every thread reaches).

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>
#include "kv_quant.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 128
#endif
#ifndef ELEM
#define ELEM __half
#endif
#ifndef WARPS
#define WARPS 4
#endif
#ifndef KV_TILE
#define KV_TILE 64
#endif
#ifndef CACHE_T
#define CACHE_T ELEM
#endif
#ifndef PER_TOKEN_SCALES
#define PER_TOKEN_SCALES 0
#endif

using namespace nvcuda;

#define Q_ROWS (16 * WARPS)
#define THREADS (32 * WARPS)
#define D_FRAGS (HEAD_DIM / 16)
#define K_FRAGS (KV_TILE / 16)
#define LD_KV (HEAD_DIM + 8)       // ELEMs per shared K/V/Q row: +16 bytes against conflicts
#define LD_S (KV_TILE + 4)         // floats per row of a warp's S scratch
#define LD_P (KV_TILE + 8)         // ELEMs per row of a warp's P
#define OUT_COLS 64                // output columns staged through the S scratch at a time
#define S_COLS (KV_TILE > OUT_COLS ? KV_TILE : OUT_COLS)
#define NEG_INF __int_as_float(0xff800000)

__device__ inline float to_float(__half x) { return __half2float(x); }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ inline void from_float(float x, __half* p) { *p = __float2half(x); }
__device__ inline void from_float(float x, __nv_bfloat16* p) { *p = __float2bfloat16(x); }

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, ELEM, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, ELEM, wmma::col_major> FragKT;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, ELEM, wmma::row_major> FragV;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

struct Shared {                    // carved out of the dynamic shared memory
    ELEM* stage[2];                // per stage: K [KV_TILE][LD_KV], then V; stage 1 first
                                   // holds the Q tile
    float* s;                      // per warp [16][S_COLS + 4]: S, then output staging
    ELEM* p;                       // per warp [16][LD_P]
    float* row;                    // per warp [16]: alpha, then 1/l
};

__device__ inline Shared carve(unsigned char* base)
{
    Shared sh;
    int stage_rows = 2 * KV_TILE > Q_ROWS ? 2 * KV_TILE : Q_ROWS;   // K and V, or the Q tile
    sh.stage[0] = reinterpret_cast<ELEM*>(base);
    sh.stage[1] = sh.stage[0] + stage_rows * LD_KV;
    sh.s = reinterpret_cast<float*>(sh.stage[1] + stage_rows * LD_KV);
    sh.p = reinterpret_cast<ELEM*>(sh.s + WARPS * 16 * (S_COLS + 4));
    sh.row = reinterpret_cast<float*>(sh.p + WARPS * 16 * LD_P);
    return sh;
}

// 16 bytes from global to shared memory, or 16 zero bytes when src is null. On sm_80 and
// later the copy is asynchronous (cp.async, completed by wait_copies); elsewhere, the CPU
// executor included, it is an ordinary copy, complete at once.
__device__ inline void copy16(void* dst, const void* src)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned shared_addr = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(shared_addr), "l"(src ? src : dst), "r"(src ? 16 : 0));
#else
    uint4 value = make_uint4(0, 0, 0, 0);
    if (src) value = *reinterpret_cast<const uint4*>(src);
    *reinterpret_cast<uint4*>(dst) = value;
#endif
}

__device__ inline void commit_copies()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int PENDING>   // wait until at most PENDING committed groups are still in flight
__device__ inline void wait_copies()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" :: "n"(PENDING));
#endif
}

// Copy `rows` rows of HEAD_DIM ELEMs to shared memory (row r at dst + r * LD_KV);
// src_row(r) gives a row's address, or null for a row of zeros.
template <typename RowFn>
__device__ inline void stage_rows(ELEM* dst, int rows, RowFn src_row)
{
    constexpr int VEC = 16 / (int)sizeof(ELEM);
    constexpr int CHUNKS = HEAD_DIM / VEC;
    for (int idx = threadIdx.x; idx < rows * CHUNKS; idx += THREADS) {
        int r = idx / CHUNKS, c = (idx % CHUNKS) * VEC;
        const ELEM* src = src_row(r);
        copy16(dst + r * LD_KV + c, src ? src + c : nullptr);
    }
}

#if KV_QUANT
// Dequantize `rows` rows of HEAD_DIM one-byte codes into shared ELEMs (row r at
// dst + r * LD_KV): a thread loads 16 codes at once (one 16-byte load, coalesced like the
// unquantized copy) and writes code * scale; slot_of(r) is the row's cache slot, or -1 for
// a row of zeros. A synchronous load: the conversion needs the codes in registers.
template <typename SlotFn>
__device__ inline void stage_codes(ELEM* dst, int rows, const unsigned char* cache,
                                   const float* scales, SlotFn slot_of, int kv_head,
                                   int num_kv_heads)
{
    constexpr int CHUNKS = HEAD_DIM / 16;
    for (int idx = threadIdx.x; idx < rows * CHUNKS; idx += THREADS) {
        int r = idx / CHUNKS, c = (idx % CHUNKS) * 16;
        long long slot = slot_of(r);
        ELEM* d = dst + r * LD_KV + c;
        if (slot < 0) {
            reinterpret_cast<uint4*>(d)[0] = make_uint4(0, 0, 0, 0);
            reinterpret_cast<uint4*>(d)[1] = make_uint4(0, 0, 0, 0);
            continue;
        }
        const float scale = scales[PER_TOKEN_SCALES ? slot * num_kv_heads + kv_head : kv_head];
        uint4 word = *reinterpret_cast<const uint4*>(
            cache + (slot * num_kv_heads + kv_head) * HEAD_DIM + c);
        const unsigned char* code = reinterpret_cast<const unsigned char*>(&word);
#pragma unroll
        for (int j = 0; j < 16; ++j) from_float(dequantize_code(code[j]) * scale, d + j);
    }
}
#endif

extern "C" __global__ void __launch_bounds__(THREADS)
prefill_tc(const ELEM* __restrict__ q,            // [total_q, num_heads, HEAD_DIM]
           const CACHE_T* __restrict__ k_cache,   // [num_pages, page_size, kv_heads, HEAD_DIM]
           const CACHE_T* __restrict__ v_cache,
           const float* __restrict__ k_scale,     // compressed pages: see the header
           const float* __restrict__ v_scale,
           const int* __restrict__ qo_indptr,     // [batch + 1]
           const int* __restrict__ block_tables,  // [batch, max_pages]
           const int* __restrict__ seq_lens,      // [batch]
           const int* __restrict__ work,          // [n_work][2]: sequence, first query of tile
           ELEM* __restrict__ out,                // like q
           int num_heads, int num_kv_heads, int page_size, int max_pages, int causal,
           float scale_log2)                      // softmax scale * log2(e)
{
    extern __shared__ __align__(16) unsigned char smem[];
    Shared sh = carve(smem);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = work[2 * blockIdx.x], t0 = work[2 * blockIdx.x + 1];
    const int head = blockIdx.y, kv_head = head / (num_heads / num_kv_heads);
    const int q_begin = qo_indptr[b], q_len = qo_indptr[b + 1] - q_begin;
    const int seq_len = seq_lens[b], first_pos = seq_len - q_len;   // position of query 0
    const int tile_rows = min(Q_ROWS, q_len - t0);
    const int* table = block_tables + (long long)b * max_pages;
    const long long row_stride = (long long)num_kv_heads * HEAD_DIM;   // one token's K row
    float* s_w = sh.s + warp * 16 * (S_COLS + 4);
    ELEM* p_w = sh.p + warp * 16 * LD_P;
    float* row_w = sh.row + warp * 16;

    // Which row of the warp's 16 each accumulator element holds (see the header).
    FragC rows_of;
    for (int i = lane; i < 256; i += 32) s_w[(i / 16) * LD_S + i % 16] = (float)(i / 16);
    __syncwarp();
    wmma::load_matrix_sync(rows_of, s_w, LD_S, wmma::mem_row_major);
    __syncwarp();

    const int block_last_pos = first_pos + t0 + tile_rows - 1;
    const int kv_end = causal ? min(seq_len, block_last_pos + 1) : seq_len;
    auto stage_kv = [&](int k0, ELEM* dst) {   // K then V of keys k0 .. k0 + KV_TILE - 1
        auto slot_of = [&](int r) -> long long {   // -1 past the keys this block reads
            int key = k0 + r;
            if (key >= kv_end) return -1;
            int vpage = key / page_size;
            return (long long)table[vpage] * page_size + (key - vpage * page_size);
        };
#if KV_QUANT
        stage_codes(dst, KV_TILE, k_cache, k_scale, slot_of, kv_head, num_kv_heads);
        stage_codes(dst + KV_TILE * LD_KV, KV_TILE, v_cache, v_scale, slot_of, kv_head,
                    num_kv_heads);
#else
        auto key_row = [&](const ELEM* cache, int r) -> const ELEM* {
            long long slot = slot_of(r);
            return slot < 0 ? nullptr : cache + slot * row_stride + (long long)kv_head * HEAD_DIM;
        };
        stage_rows(dst, KV_TILE, [&](int r) { return key_row(k_cache, r); });
        stage_rows(dst + KV_TILE * LD_KV, KV_TILE, [&](int r) { return key_row(v_cache, r); });
#endif
        commit_copies();
    };

    // The Q tile (rows past the sequence's queries are zeros) into stage 1, the first K/V
    // tile into stage 0; then each warp takes its Q fragments.
    stage_rows(sh.stage[1], Q_ROWS, [&](int r) -> const ELEM* {
        return r < tile_rows ? q + ((long long)(q_begin + t0 + r) * num_heads + head) * HEAD_DIM
                             : nullptr;
    });
    commit_copies();
    stage_kv(0, sh.stage[0]);
    wait_copies<1>();
    __syncthreads();
    FragA q_frag[D_FRAGS];
#pragma unroll
    for (int d = 0; d < D_FRAGS; ++d)
        wmma::load_matrix_sync(q_frag[d], sh.stage[1] + warp * 16 * LD_KV + d * 16, LD_KV);
    __syncthreads();   // stage 1 is about to receive the second K/V tile

    FragC o_frag[D_FRAGS];
#pragma unroll
    for (int d = 0; d < D_FRAGS; ++d) wmma::fill_fragment(o_frag[d], 0.0f);

    // Lane pair (2 * r, 2 * r + 1) owns row r of the warp: its running max and sum.
    const int my_row = lane / 2, my_half = lane % 2;
    const int my_query = warp * 16 + my_row;                       // row within the tile
    const bool row_real = my_query < tile_rows;
    const int my_pos = first_pos + t0 + my_query;                  // its position
    float m_run = NEG_INF, l_run = 0.0f;

    const int warp_last_pos = first_pos + t0 + min(warp * 16 + 15, tile_rows - 1);
    const bool warp_has_rows = warp * 16 < tile_rows;

    for (int k0 = 0, tile = 0; k0 < kv_end; k0 += KV_TILE, ++tile) {
        if (k0 + KV_TILE < kv_end) stage_kv(k0 + KV_TILE, sh.stage[(tile + 1) & 1]);
        else commit_copies();           // an empty group keeps the count of groups uniform
        wait_copies<1>();               // this thread's copies of this tile have landed
        __syncthreads();                // ... and everyone else's
        const ELEM* k_tile = sh.stage[tile & 1];
        const ELEM* v_tile = k_tile + KV_TILE * LD_KV;
        if (warp_has_rows && !(causal && warp_last_pos < k0)) {   // warp-uniform

        // S = Q K^T for this warp's 16 rows, KV_TILE keys, into the warp's scratch.
#pragma unroll
        for (int n = 0; n < K_FRAGS; ++n) {
            FragC acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int d = 0; d < D_FRAGS; ++d) {
                FragKT k_frag;
                wmma::load_matrix_sync(k_frag, k_tile + n * 16 * LD_KV + d * 16, LD_KV);
                wmma::mma_sync(acc, q_frag[d], k_frag, acc);
            }
            wmma::store_matrix_sync(s_w + n * 16, acc, LD_S, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax: each lane takes every other score of its row.
        float score[KV_TILE / 2];
        float tile_max = NEG_INF;
#pragma unroll
        for (int j = 0; j < KV_TILE / 2; ++j) {
            int c = 2 * j + my_half, key = k0 + c;
            bool visible = row_real && key < kv_end && (!causal || key <= my_pos);
            score[j] = visible ? s_w[my_row * LD_S + c] * scale_log2 : NEG_INF;
            tile_max = fmaxf(tile_max, score[j]);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        float m_new = fmaxf(m_run, tile_max);
        float m_use = m_new == NEG_INF ? 0.0f : m_new;             // a row with no key yet
        float alpha = exp2f(m_run - m_use);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < KV_TILE / 2; ++j) {
            float p = exp2f(score[j] - m_use);
            from_float(p, p_w + my_row * LD_P + 2 * j + my_half);
            sum += p;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l_run = l_run * alpha + sum;
        m_run = m_new;
        if (my_half == 0) row_w[my_row] = alpha;
        __syncwarp();

        // O = alpha * O + P V.
#pragma unroll
        for (int i = 0; i < rows_of.num_elements; ++i) {
            float a = row_w[(int)rows_of.x[i]];
#pragma unroll
            for (int d = 0; d < D_FRAGS; ++d) o_frag[d].x[i] *= a;
        }
        FragA p_frag[K_FRAGS];
#pragma unroll
        for (int n = 0; n < K_FRAGS; ++n)
            wmma::load_matrix_sync(p_frag[n], p_w + n * 16, LD_P);
#pragma unroll
        for (int d = 0; d < D_FRAGS; ++d) {
#pragma unroll
            for (int n = 0; n < K_FRAGS; ++n) {
                FragV v_frag;
                wmma::load_matrix_sync(v_frag, v_tile + n * 16 * LD_KV + d * 16, LD_KV);
                wmma::mma_sync(o_frag[d], p_frag[n], v_frag, o_frag[d]);
            }
        }
        __syncwarp();   // row_w and p_w are rewritten by the next tile
        }
        __syncthreads();   // this stage is refilled two tiles on: everyone is done reading it
    }

    if (!warp_has_rows) return;   // no barrier below
    // out = O / l, written OUT_COLS columns at a time through the warp's scratch.
    if (my_half == 0) row_w[my_row] = l_run > 0.0f ? 1.0f / l_run : 0.0f;
    __syncwarp();
#pragma unroll
    for (int i = 0; i < rows_of.num_elements; ++i) {
        float inv = row_w[(int)rows_of.x[i]];
#pragma unroll
        for (int d = 0; d < D_FRAGS; ++d) o_frag[d].x[i] *= inv;
    }
#pragma unroll
    for (int c0 = 0; c0 < HEAD_DIM; c0 += OUT_COLS) {
        const int cols = min(OUT_COLS, HEAD_DIM - c0);
#pragma unroll
        for (int d = c0 / 16; d < (c0 + cols) / 16; ++d)
            wmma::store_matrix_sync(s_w + (d * 16 - c0), o_frag[d], S_COLS + 4,
                                    wmma::mem_row_major);
        __syncwarp();
        for (int i = lane; i < 16 * cols; i += 32) {
            int r = i / cols, c = i % cols, query = warp * 16 + r;
            if (query < tile_rows)
                from_float(s_w[r * (S_COLS + 4) + c],
                           out + ((long long)(q_begin + t0 + query) * num_heads + head) * HEAD_DIM
                               + c0 + c);
        }
        __syncwarp();
    }
}
