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
//   compute). One barrier per tile; between barriers each warp works alone on its share:
//   warp w takes row tile w % ROW_TILES (16 query heads) and the w / ROW_TILES-th slice of
//   TW = TILE_T * ROW_TILES / TC_WARPS tokens of the tile, and keeps its own online softmax:
//     1. S = Q K^T for its 16 rows x TW tokens (HEAD_DIM / 16 mma_sync steps per 16 tokens),
//        stored to the warp's own shared memory (fp32);
//     2. softmax, two lanes per row: scale, mask tokens past the end, new running max m,
//        alpha = 2^(m_old - m_new), P = 2^(S - m) in fp16/bf16, the row sums;
//     3. O = alpha * O + P V: the 16 x HEAD_DIM accumulator fragments of the warp stay in
//        registers for the whole partition.
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
// each warp converts the tokens it multiplies to KV_T in a buffer of its own (exact: every
// int8 and e4m3 code is a 16-bit float) with no extra barrier. The scales stay in fp32:
// static ones fold into the logit scale (K) and the output (V); per-token ones multiply the
// token's logit (K) and its probability in P (V), not the row sum l.
//
// Compile-time parameters (NVRTC -D; one source instantiated per case): KV_T (and KV_BF16),
// HEAD_DIM (a multiple of 16), TC_WARPS (warps per block), ROW_TILES (1, 2 or 4, dividing
// TC_WARPS), TILE_T (tokens per tile: each warp takes TW = TILE_T * ROW_TILES / TC_WARPS, a
// multiple of 16), STAGES (>= 2), S_CHAINS (1 or 2 independent accumulators for S = QK^T),
// and the three above. Logits are in base 2 (scale_log2 = scale * log2 e); cache offsets
// are 64-bit.

#include "common.cuh"
#include "kv_quant.cuh"
#include <mma.h>

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
#ifndef S_CHAINS
#define S_CHAINS 2
#endif
#ifndef CACHE_T
#define CACHE_T KV_T
#endif
#ifndef PER_TOKEN_SCALES
#define PER_TOKEN_SCALES 0
#endif
#define TC_THREADS (32 * TC_WARPS)

using namespace nvcuda;

constexpr int NWARPS = TC_WARPS;
constexpr int ROWS = 16 * ROW_TILES;          // rows of Q (query heads, padded)
constexpr int SLICES = NWARPS / ROW_TILES;    // warps that share a row tile
constexpr int TW = TILE_T / SLICES;           // tokens of a tile per warp
constexpr int LD = HEAD_DIM + 8;    // shared row of Q, K, V (elements): +16 bytes against bank conflicts
constexpr int LSW = TW + 4;         // a warp's row of S (floats)
constexpr int LPW = TW + 8;         // a warp's row of P (elements)
constexpr int LO = HEAD_DIM + 4;    // a row of O at the end (floats)
constexpr int D_TILES = HEAD_DIM / 16;
constexpr int CPL = TW / 2;                   // softmax columns per lane (two lanes per row)
constexpr int ROW_BYTES = HEAD_DIM * (int)sizeof(CACHE_T);   // one token's K (or V) row
constexpr int CHUNKS = ROW_BYTES / 16;        // 16-byte copies per K or V row
constexpr int CHUNK_ELEMS = 16 / (int)sizeof(CACHE_T);
static_assert(NWARPS % ROW_TILES == 0, "ROW_TILES must divide TC_WARPS");
static_assert(HEAD_DIM % 16 == 0 && TW % 16 == 0 && TILE_T == TW * SLICES && STAGES >= 2,
              "bad tile sizes");
static_assert(S_CHAINS == 1 || S_CHAINS == 2, "S_CHAINS is 1 or 2");

// Shared memory, in bytes from the start (decode_plan.tc_shared_bytes computes the same).
// Staged tiles: STAGES x (K rows, V rows) as they come from the cache: KV_T rows padded to
// LD, or rows of codes (never read by WMMA, so unpadded).
constexpr int LDC = KV_QUANT ? ROW_BYTES : LD * 2;           // a staged row, bytes
constexpr int STAGE_BYTES = 2 * TILE_T * LDC;
#if KV_QUANT
constexpr int WKV_OFF = STAGES * STAGE_BYTES;                // [NWARPS][2][TW][LD] converted
constexpr int SC_OFF = WKV_OFF + NWARPS * 2 * TW * LD * 2;   // [STAGES][2][TILE_T] scales
constexpr int KV_BYTES = SC_OFF + (PER_TOKEN_SCALES ? STAGES * 2 * TILE_T * 4 : 0);
#else
constexpr int KV_BYTES = STAGES * STAGE_BYTES;
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
static_assert(NWARPS * 16 * LO * 4 <= KV_BYTES, "the warps' O do not fit where the K/V tiles were");
static_assert(KV_BYTES % 128 == 0, "keep Q and the rest 128-byte aligned");

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_frag;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, KV_T, wmma::row_major> a_frag;

// One tile of K and V (tokens t0 .. t0 + TILE_T - 1): where this thread's 16-byte chunks
// come from (element offsets into the caches; -1 past the end: zeros, nothing read), then
// the copies themselves. Looking the pages up first, before waiting for the previous tile,
// keeps the block-table reads off the path between barrier and arithmetic.
constexpr int TILE_COPIES = (TILE_T * CHUNKS + TC_THREADS - 1) / TC_THREADS;   // per thread

__device__ inline void tile_offsets(long long (&offset)[TILE_COPIES], const int* table, int t0,
                                    int end, int page_size, int page_shift,
                                    long long page_stride, long long row_stride,
                                    long long head_off)
{
#pragma unroll
    for (int i = 0; i < TILE_COPIES; ++i) {
        const int c = i * TC_THREADS + threadIdx.x;
        const int t = t0 + c / CHUNKS;
        offset[i] = -1;   // a token past the end is never looked up
        if (t < end && (TILE_T * CHUNKS % TC_THREADS == 0 || c < TILE_T * CHUNKS)) {
            const int vpage = page_shift >= 0 ? (t >> page_shift) : (t / page_size);
            const long long page = table[vpage];
            offset[i] = page * page_stride + (long long)(t - vpage * page_size) * row_stride
                        + head_off + (c % CHUNKS) * CHUNK_ELEMS;
        }
    }
}

#if PER_TOKEN_SCALES
// A 4-byte asynchronous copy (cp.async.ca: .cg takes only 16 bytes), zeros when not valid.
__device__ inline void copy4_async(float* dst, const float* src, bool valid)
{
#ifdef ASYNC_COPY
    unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :: "r"(s), "l"(src), "r"(valid ? 4 : 0));
#else
    *dst = valid ? *src : 0.0f;
#endif
}
#endif

// The copies of one tile into stage buffer `stage` (K rows, then V rows); with per-token
// scales, the thread that copies a row's first chunk also copies its two scales (the scale
// index slot * num_kv_heads + kv_head is the row's element offset / HEAD_DIM).
__device__ inline void copy_tile(unsigned char* smem, int stage, const CACHE_T* k_cache,
                                 const CACHE_T* v_cache, const float* k_scale,
                                 const float* v_scale, const long long (&offset)[TILE_COPIES])
{
    unsigned char* ks = smem + stage * STAGE_BYTES;
#pragma unroll
    for (int i = 0; i < TILE_COPIES; ++i) {
        const int c = i * TC_THREADS + threadIdx.x;
        if (TILE_T * CHUNKS % TC_THREADS == 0 || c < TILE_T * CHUNKS) {
            const int at = (c / CHUNKS) * LDC + (c % CHUNKS) * 16;
            const long long e = offset[i] < 0 ? 0 : offset[i];
            copy16_async(ks + at, k_cache + e, offset[i] >= 0);
            copy16_async(ks + TILE_T * LDC + at, v_cache + e, offset[i] >= 0);
#if KV_QUANT && PER_TOKEN_SCALES
            if (c % CHUNKS == 0) {
                float* sc = reinterpret_cast<float*>(smem + SC_OFF) + stage * 2 * TILE_T + c / CHUNKS;
                copy4_async(sc, k_scale + e / HEAD_DIM, offset[i] >= 0);
                copy4_async(sc + TILE_T, v_scale + e / HEAD_DIM, offset[i] >= 0);
            }
#endif
        }
    }
}

#if KV_QUANT
// 16 codes (one 16-byte chunk) to 16 KV_T values, exactly (no scale): every int8 and every
// e4m3 value is a 16-bit float. fp16, two at a time: int8 through the 1024 + x bit trick,
// e4m3 by moving its bits into place (x 2^8 for the exponent bias; NaN kept); sm_89+ has an
// instruction for it. bf16: one at a time through float.
#ifndef KV_BF16
__device__ inline __half2 codes2_to_half2(unsigned two)   // codes in the low 16 bits
{
#if KV_QUANT == 1
    const unsigned u = two ^ 0x8080u;   // x + 128, as unsigned bytes
    const unsigned bits = (u & 0xffu) | ((u & 0xff00u) << 8) | 0x64006400u;   // 1024 + x + 128
    return __hsub2(__halves2half2(__ushort_as_half((unsigned short)(bits & 0xffffu)),
                                  __ushort_as_half((unsigned short)(bits >> 16))),
                   __float2half2_rn(1152.0f));
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    unsigned r;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(r) : "h"((unsigned short)two));
    return __halves2half2(__ushort_as_half((unsigned short)(r & 0xffffu)),
                          __ushort_as_half((unsigned short)(r >> 16)));
#else
    const unsigned x = ((two & 0xffu) << 8) | ((two & 0xff00u) << 16);   // each code << 8
    unsigned bits = (x & 0x80008000u) | ((x >> 1) & 0x3f803f80u);       // sign, e, m
    if ((two & 0x7fu) == 0x7fu) bits |= 0x7fffu;                         // NaN stays NaN
    if ((two & 0x7f00u) == 0x7f00u) bits |= 0x7fff0000u;
    return __hmul2(__halves2half2(__ushort_as_half((unsigned short)(bits & 0xffffu)),
                                  __ushort_as_half((unsigned short)(bits >> 16))),
                   __float2half2_rn(256.0f));
#endif
}
#endif

__device__ inline void convert_chunk(KV_T* dst, const uint4& raw)
{
#ifndef KV_BF16
    __align__(16) __half2 h[8];
    const unsigned w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        h[2 * i] = codes2_to_half2(w[i] & 0xffffu);
        h[2 * i + 1] = codes2_to_half2(w[i] >> 16);
    }
    reinterpret_cast<uint4*>(dst)[0] = reinterpret_cast<const uint4*>(h)[0];
    reinterpret_cast<uint4*>(dst)[1] = reinterpret_cast<const uint4*>(h)[1];
#else
    const unsigned char* code = reinterpret_cast<const unsigned char*>(&raw);
#pragma unroll
    for (int j = 0; j < 16; ++j) store_value(dst + j, dequantize_code(code[j]));
#endif
}

// A warp converts the TW rows of codes it multiplies (K, then V) into its own buffer.
__device__ inline void convert_slice(KV_T* dst, const unsigned char* stage, int lane)
{
    constexpr int QC = HEAD_DIM / 16;   // 16-code chunks per row
#pragma unroll
    for (int kv = 0; kv < 2; ++kv) {
        const unsigned char* src = stage + kv * TILE_T * LDC;
        for (int c = lane; c < TW * QC; c += 32) {
            const int r = c / QC, col = (c % QC) * 16;
            convert_chunk(dst + (kv * TW + r) * LD + col,
                          *reinterpret_cast<const uint4*>(src + r * LDC + col));
        }
    }
}
#endif

extern "C" __global__ void __launch_bounds__(TC_THREADS) paged_decode_tc(
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
    const int rt = warp % ROW_TILES, slice = warp / ROW_TILES;   // this warp's rows and tokens
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
    long long offset[TILE_COPIES];

    // The first STAGES - 1 tiles start loading before anything else. Every thread commits
    // one group per tile, an empty one past the last tile too, so that "wait until at most
    // N groups are in flight" means the same tile for every thread.
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ntiles) {
            tile_offsets(offset, table, start + s * TILE_T, end, page_size, page_shift,
                         page_stride, row_stride, head_off);
            copy_tile(smem, s, k_cache, v_cache, k_scale, v_scale, offset);
        }
        copy_commit();
    }
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

    acc_frag o[D_TILES];
#pragma unroll
    for (int j = 0; j < D_TILES; ++j) wmma::fill_fragment(o[j], 0.0f);
    const int row = lane / 2, col0 = (lane % 2) * CPL;   // this lane's softmax row and columns
    float m_run = NEG_BIG, l_run = 0.0f;   // the row's running max; this lane's share of its sum
    const KV_T* q_rows = qs + rt * 16 * LD;

    for (int i = 0; i < ntiles; ++i) {
        const int nt = i + STAGES - 1;   // the tile to start now, into the buffer of tile i - 1
        if (nt < ntiles)
            tile_offsets(offset, table, start + nt * TILE_T, end, page_size, page_shift,
                         page_stride, row_stride, head_off);
        copy_wait<STAGES - 2>();   // tile i has landed (this thread's copies) ...
        __syncthreads();           // ... everyone's; and every warp is done with tile i - 1
        if (nt < ntiles) copy_tile(smem, nt % STAGES, k_cache, v_cache, k_scale, v_scale, offset);
        copy_commit();
        const unsigned char* stage = smem + (i % STAGES) * STAGE_BYTES;
#if KV_QUANT
        // this warp's tokens, converted into its own buffer: no barrier between warps
        KV_T* ks = reinterpret_cast<KV_T*>(smem + WKV_OFF) + warp * 2 * TW * LD;
        convert_slice(ks, stage + slice * TW * LDC, lane);
        const KV_T* vs = ks + TW * LD;
        __syncwarp();
#else
        const KV_T* ks = reinterpret_cast<const KV_T*>(stage) + slice * TW * LD;   // this
        const KV_T* vs = ks + TILE_T * LD;                                         // warp's tokens
#endif

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
        const float* ksc = reinterpret_cast<const float*>(smem + SC_OFF)
                           + (i % STAGES) * 2 * TILE_T + slice * TW + col0;
        const float* vsc = ksc + TILE_T;
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

        // 3. O = alpha * O + P V (each element's alpha read once, for all D_TILES fragments)
        float alpha_e[acc_frag::num_elements];
#pragma unroll
        for (int e = 0; e < o[0].num_elements; ++e) alpha_e[e] = alpha_s[(int)rowid.x[e]];
#pragma unroll
        for (int j = 0; j < D_TILES; ++j) {
#pragma unroll
            for (int e = 0; e < o[j].num_elements; ++e) o[j].x[e] *= alpha_e[e];
        }
#pragma unroll
        for (int k = 0; k < TW / 16; ++k) {
            a_frag a;
            wmma::load_matrix_sync(a, ps + k * 16, LPW);
#pragma unroll
            for (int j = 0; j < D_TILES; ++j) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, KV_T, wmma::row_major> bv;
                wmma::load_matrix_sync(bv, vs + k * 16 * LD + j * 16, LD);
                wmma::mma_sync(o[j], a, bv, o[j]);
            }
        }
        __syncwarp();   // alpha_s and ps are rewritten by the next tile
    }
    copy_wait<0>();
    // Each warp's (m, l) per row and its O to shared memory (where the K/V tiles were).
    const float l_row = l_run + __shfl_xor_sync(0xffffffffu, l_run, 1);
    if (lane % 2 == 0) {
        m_s[warp * 16 + row] = m_run;
        l_s[warp * 16 + row] = l_row;
    }
    __syncthreads();   // every warp is done with the last tile
    float* os = reinterpret_cast<float*>(smem);   // [NWARPS][16][LO]
#pragma unroll
    for (int j = 0; j < D_TILES; ++j)
        wmma::store_matrix_sync(os + warp * 16 * LO + j * 16, o[j], LO, wmma::mem_row_major);
    __syncthreads();

    // Merge the SLICES warps of each row tile: M = max m_w, L = sum l_w 2^(m_w - M),
    // O = sum O_w 2^(m_w - M) / L. Row r of the block is row r % 16 of row tile r / 16, held
    // by warps r / 16 + ROW_TILES * s.
    const long long out_row = (long long)b * num_heads + h0;
    const long long slot0 = (long long)slot_start[b] * num_heads + h0;   // + part * num_heads
    const bool single = nparts == 1;   // block-uniform: the whole sequence was this block's
    for (int idx = threadIdx.x; idx < nh * HEAD_DIM; idx += TC_THREADS) {
        const int r = idx / HEAD_DIM, d = idx % HEAD_DIM;
        const int w0 = r / 16, rr = r % 16;
        float mx = NEG_BIG;
#pragma unroll
        for (int s = 0; s < SLICES; ++s) mx = fmaxf(mx, m_s[(w0 + ROW_TILES * s) * 16 + rr]);
        float l = 0.0f, acc = 0.0f;
#pragma unroll
        for (int s = 0; s < SLICES; ++s) {
            const int w = w0 + ROW_TILES * s;
            const float c = exp2f(m_s[w * 16 + rr] - mx);
            l += l_s[w * 16 + rr] * c;
            acc += os[(w * 16 + rr) * LO + d] * c;
        }
        if (single) {
            store_value(out + (out_row + r) * HEAD_DIM + d, acc / l * v_mult);
        } else {
            const long long slot = slot0 + (long long)part * num_heads + r;
            part_out[slot * HEAD_DIM + d] = acc / l * v_mult;
            if (d == 0) {
                part_ml[slot * 2] = mx;
                part_ml[slot * 2 + 1] = l;
            }
        }
    }
    if (single) return;

    // The last block of this (sequence, row chunk) to finish merges the partitions.
    __threadfence();   // this block's partial state is visible to the whole GPU...
    __syncthreads();
    if (threadIdx.x == 0) {
        int* counter = counters + (long long)b * gridDim.y + blockIdx.y;
        const int done = atomicAdd(counter, 1);   // ...before it is counted
        flag_s[0] = done == nparts - 1;
        if (flag_s[0]) *counter = 0;   // ready for the next launch
    }
    __syncthreads();
    if (!flag_s[0]) return;
    __threadfence();

    // Weights w[r][p] = l_p 2^(m_p - M_r) / sum_p (...), one warp per row, in shared memory.
    float* w = reinterpret_cast<float*>(smem);   // [nh][nparts]; the warps' O are merged already
    const long long part_stride = num_heads;     // slots of one partition are num_heads apart
    for (int r = warp; r < nh; r += NWARPS) {
        const float* ml = part_ml + (slot0 + r) * 2;
        float mx = NEG_BIG;
        for (int p = lane; p < nparts; p += 32) mx = fmaxf(mx, load_cg(ml + p * part_stride * 2));
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        float sum = 0.0f;
        for (int p = lane; p < nparts; p += 32) {
            const float wp = load_cg(ml + p * part_stride * 2 + 1)
                             * exp2f(load_cg(ml + p * part_stride * 2) - mx);
            w[r * nparts + p] = wp;
            sum += wp;
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        for (int p = lane; p < nparts; p += 32) w[r * nparts + p] /= sum;
    }
    __syncthreads();
    // out[r][4 dims] = sum_p w[r][p] O_p[r][4 dims]: 16-byte loads, 8 partitions in flight.
    constexpr int D4 = HEAD_DIM / 4;
    const long long part_stride4 = part_stride * D4;
    for (int idx = threadIdx.x; idx < nh * D4; idx += TC_THREADS) {
        const int r = idx / D4, d4 = idx % D4;
        const float4* po = reinterpret_cast<const float4*>(part_out + (slot0 + r) * HEAD_DIM) + d4;
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
        for (int p = 0; p < nparts; ++p) {
            const float wp = w[r * nparts + p];
            const float4 x = load_cg(po + p * part_stride4);
            acc.x += wp * x.x;
            acc.y += wp * x.y;
            acc.z += wp * x.z;
            acc.w += wp * x.w;
        }
        KV_T* o_out = out + (out_row + r) * HEAD_DIM + d4 * 4;
        store_value(o_out, acc.x);
        store_value(o_out + 1, acc.y);
        store_value(o_out + 2, acc.z);
        store_value(o_out + 3, acc.w);
    }
}
