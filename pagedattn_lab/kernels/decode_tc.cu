// Grouped decode on tensor cores: the query heads that share a KV head (a GQA group) are the
// rows of one matrix, so decode becomes two small matrix products per tile of the cache,
//
//   S = Q K^T   (rows x tokens)      O = softmax(S) V   (rows x head_dim)
//
// done with WMMA (mma.h: 16x16x16 tiles, fp16 or bf16 inputs, fp32 accumulators). Each K and
// V tile is read from memory once for the whole group, however many heads it has.
//
// Thread-to-data mapping (kernel paged_decode_tc):
//   grid  = (work items, num_kv_heads * row_chunks); block = 4 warps (128 threads).
//   A work item is one partition of one sequence: tokens [part * part_len, min(seq_len,
//   (part + 1) * part_len)) (split-K, as in flash-decoding). The plan lists the items, so no
//   block is launched for a partition past the end of a short sequence.
//   blockIdx.y picks the KV head and which of its query heads are the rows of Q: up to
//   16 * ROW_TILES of them (a group larger than that is split over row_chunks blocks). Rows
//   past the group are zero and their results are dropped.
//   The partition is streamed through shared memory in tiles of TILE_T tokens, up to STAGES
//   tiles in flight (cp.async; K and V of a tile are separate groups). For each tile:
//     1. S = Q K^T: the 16x16 tiles of S are shared out over the warps; each is HEAD_DIM/16
//        mma_sync steps; S goes to shared memory (fp32).
//     2. online softmax, one row per TPR threads: scale, mask tokens past the end, new running
//        max m, rescale factor alpha = 2^(m_old - m_new), P = 2^(S - m) in fp16/bf16, row sums.
//     3. O = alpha * O + P V: the 16x16 tiles of O stay in registers (accumulator fragments)
//        across the whole partition, each owned by one warp.
//   WMMA does not say which element of a fragment a thread holds. To scale row r of O by its
//   alpha, the kernel loads, once, an accumulator fragment from a matrix whose every element
//   is its own row number: element e of any accumulator fragment is then in row rowid.x[e].
//   At the end the block writes O / l; a sequence cut into several partitions writes the
//   partial state (O / l, m, l) in fp32 instead, and the last of its blocks to finish (an
//   atomic counter) merges them: out = sum_p w_p O_p with w_p = l_p 2^(m_p - M) / sum w.
//
// Compile-time parameters (NVRTC -D; one source instantiated per case): KV_T (and KV_BF16),
// HEAD_DIM (a multiple of 16), ROW_TILES (1-4), TILE_T (a multiple of 16), STAGES (>= 2).
// Logits are in base 2 (scale_log2 = scale * log2 e); cache offsets are 64-bit.

#include "common.cuh"
#include <mma.h>

#ifndef HEAD_DIM
#define HEAD_DIM 128
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
#define TC_THREADS 128

using namespace nvcuda;

constexpr int NWARPS = TC_THREADS / 32;
constexpr int ROWS = 16 * ROW_TILES;                    // rows of Q (query heads, padded)
constexpr int LD = HEAD_DIM + 8;       // shared row of Q, K, V (elements): +16 bytes against bank conflicts
constexpr int LS = TILE_T + 4;         // shared row of S (floats)
constexpr int LP = TILE_T + 8;         // shared row of P (elements)
constexpr int LO = HEAD_DIM + 4;       // shared row of O at the end (floats)
constexpr int D_TILES = HEAD_DIM / 16;
constexpr int S_TILES = ROW_TILES * (TILE_T / 16);      // 16x16 tiles of S per K tile
constexpr int O_TILES = ROW_TILES * D_TILES;            // 16x16 tiles of O
constexpr int O_PER_WARP = (O_TILES + NWARPS - 1) / NWARPS;
constexpr int TPR = ROWS <= 16 ? 8 : ROWS <= 32 ? 4 : 2;   // softmax threads per row
constexpr int CPR = TILE_T / TPR;                          // softmax columns per thread
constexpr int CHUNKS = HEAD_DIM / 8;                       // 16-byte chunks per K or V row
static_assert(HEAD_DIM % 16 == 0 && TILE_T % 16 == 0 && STAGES >= 2, "bad tile sizes");
static_assert(ROWS * TPR <= TC_THREADS, "too many rows for the softmax threads");

// Shared memory, in bytes from the start (the wrapper computes the same total).
constexpr int KV_BYTES = STAGES * 2 * TILE_T * LD * 2;
constexpr int Q_OFF = KV_BYTES;
constexpr int S_OFF = Q_OFF + ROWS * LD * 2;
constexpr int P_OFF = S_OFF + ROWS * LS * 4;
constexpr int ROWID_OFF = P_OFF + ROWS * LP * 2;
constexpr int ALPHA_OFF = ROWID_OFF + 16 * 16 * 4;
constexpr int M_OFF = ALPHA_OFF + ROWS * 4;
constexpr int L_OFF = M_OFF + ROWS * 4;
constexpr int FLAG_OFF = L_OFF + ROWS * 4;
constexpr int SMEM_BYTES = FLAG_OFF + 16;
static_assert(ROWS * LO * 4 <= KV_BYTES, "O does not fit where the K/V tiles were");

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_frag;

// Start the copies of one tile of K and V (tokens t0 .. t0 + TILE_T - 1, zeros past `end`),
// as two groups: K first, then V (S = Q K^T can start while V is still on its way).
constexpr int TILE_COPIES = (TILE_T * CHUNKS + TC_THREADS - 1) / TC_THREADS;   // per thread
__device__ inline void load_tile(KV_T* ks, KV_T* vs, const KV_T* k_cache, const KV_T* v_cache,
                                 const int* table, int t0, int end, int page_size, int page_shift,
                                 long long page_stride, long long row_stride, long long head_off)
{
    long long offset[TILE_COPIES];   // element offsets in the caches; -1: past the end
#pragma unroll
    for (int i = 0; i < TILE_COPIES; ++i) {
        const int c = i * TC_THREADS + threadIdx.x;
        const int t = t0 + c / CHUNKS;
        offset[i] = -1;   // a token past the end reads nothing (and is never looked up)
        if (t < end && (TILE_T * CHUNKS % TC_THREADS == 0 || c < TILE_T * CHUNKS)) {
            const int vpage = page_shift >= 0 ? (t >> page_shift) : (t / page_size);
            const long long page = table[vpage];
            offset[i] = page * page_stride + (long long)(t - vpage * page_size) * row_stride
                        + head_off + (c % CHUNKS) * 8;
        }
    }
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
        const KV_T* cache = pass ? v_cache : k_cache;
        KV_T* tile = pass ? vs : ks;
#pragma unroll
        for (int i = 0; i < TILE_COPIES; ++i) {
            const int c = i * TC_THREADS + threadIdx.x;
            if (TILE_T * CHUNKS % TC_THREADS == 0 || c < TILE_T * CHUNKS)
                copy16_async(tile + (c / CHUNKS) * LD + (c % CHUNKS) * 8,
                             cache + (offset[i] < 0 ? 0 : offset[i]), offset[i] >= 0);
        }
        copy_commit();
    }
}

__device__ inline void empty_groups() { copy_commit(); copy_commit(); }   // a tile past the end

extern "C" __global__ void __launch_bounds__(TC_THREADS) paged_decode_tc(
    const KV_T* __restrict__ q,            // [batch, num_heads, HEAD_DIM]
    const KV_T* __restrict__ k_cache,      // [num_pages, page_size, num_kv_heads, HEAD_DIM]
    const KV_T* __restrict__ v_cache,
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
    KV_T* kv = reinterpret_cast<KV_T*>(smem);
    KV_T* qs = reinterpret_cast<KV_T*>(smem + Q_OFF);
    float* ss = reinterpret_cast<float*>(smem + S_OFF);
    KV_T* ps = reinterpret_cast<KV_T*>(smem + P_OFF);
    float* rowid_s = reinterpret_cast<float*>(smem + ROWID_OFF);
    float* alpha_s = reinterpret_cast<float*>(smem + ALPHA_OFF);
    float* m_s = reinterpret_cast<float*>(smem + M_OFF);
    float* l_s = reinterpret_cast<float*>(smem + L_OFF);
    int* flag_s = reinterpret_cast<int*>(smem + FLAG_OFF);

    const int warp = threadIdx.x / 32;
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

    // The first STAGES - 1 tiles start loading before anything else. Every thread commits
    // two groups per tile (K, V), empty ones past the last tile too, so that "wait until at
    // most N groups are in flight" means the same tile for every thread.
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ntiles)
            load_tile(kv + s * 2 * TILE_T * LD, kv + (s * 2 + 1) * TILE_T * LD, k_cache, v_cache,
                      table, start + s * TILE_T, end, page_size, page_shift, page_stride,
                      row_stride, head_off);
        else
            empty_groups();
    }

    // Q: the block's query heads as rows, zero rows below them.
    for (int c = threadIdx.x; c < ROWS * CHUNKS; c += TC_THREADS) {
        const int r = c / CHUNKS, col = c % CHUNKS;
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

    acc_frag o[O_PER_WARP];
#pragma unroll
    for (int j = 0; j < O_PER_WARP; ++j) wmma::fill_fragment(o[j], 0.0f);
    const int row = threadIdx.x / TPR;            // the softmax row of this thread
    const int col0 = (threadIdx.x % TPR) * CPR;   // and its first column
    const bool softmax_thread = threadIdx.x < ROWS * TPR;   // whole warps
    float m_run = NEG_BIG, l_run = 0.0f;          // this row's running max, this thread's sum

    for (int i = 0; i < ntiles; ++i) {
        copy_wait<2 * STAGES - 3>();   // K of tile i has landed (its V may still be coming)
        __syncthreads();   // ... for every thread; and every warp is done with tile i - 1
        {
            const int nt = i + STAGES - 1;   // refill the buffer of tile i - 1
            const int buf = nt % STAGES;
            if (nt < ntiles)
                load_tile(kv + buf * 2 * TILE_T * LD, kv + (buf * 2 + 1) * TILE_T * LD, k_cache,
                          v_cache, table, start + nt * TILE_T, end, page_size, page_shift,
                          page_stride, row_stride, head_off);
            else
                empty_groups();
        }
        const KV_T* ks = kv + (i % STAGES) * 2 * TILE_T * LD;
        const KV_T* vs = ks + TILE_T * LD;

        // 1. S = Q K^T (K^T is K read column-major)
        for (int st = warp; st < S_TILES; st += NWARPS) {
            const int rt = st / (TILE_T / 16), ct = st % (TILE_T / 16);
            acc_frag s;
            wmma::fill_fragment(s, 0.0f);
#pragma unroll
            for (int k = 0; k < D_TILES; ++k) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, KV_T, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, KV_T, wmma::col_major> bk;
                wmma::load_matrix_sync(a, qs + rt * 16 * LD + k * 16, LD);
                wmma::load_matrix_sync(bk, ks + ct * 16 * LD + k * 16, LD);
                wmma::mma_sync(s, a, bk, s);
            }
            wmma::store_matrix_sync(ss + rt * 16 * LS + ct * 16, s, LS, wmma::mem_row_major);
        }
        __syncthreads();

        // 2. online softmax over this tile's columns
        if (softmax_thread) {
            const int t0 = start + i * TILE_T + col0;
            float sv[CPR];
            float mx = NEG_BIG;
#pragma unroll
            for (int j = 0; j < CPR; ++j) {
                sv[j] = t0 + j < end ? ss[row * LS + col0 + j] * scale_log2 : NEG_INF;
                mx = fmaxf(mx, sv[j]);
            }
#pragma unroll
            for (int off = TPR / 2; off > 0; off >>= 1)
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            const float m_new = fmaxf(m_run, mx);
            const float alpha = exp2f(m_run - m_new);
            m_run = m_new;
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < CPR; ++j) {
                const float p = exp2f(sv[j] - m_new);   // 0 for a masked token
                sum += p;
                store_value(ps + row * LP + col0 + j, p);
            }
            l_run = l_run * alpha + sum;
            if (threadIdx.x % TPR == 0) alpha_s[row] = alpha;
        }
        copy_wait<2 * STAGES - 2>();   // V of tile i has landed
        __syncthreads();

        // 3. O = alpha * O + P V
#pragma unroll
        for (int j = 0; j < O_PER_WARP; ++j) {
            const int ot = warp + j * NWARPS;
            if (ot < O_TILES) {   // warp-uniform
                const int rt = ot / D_TILES, dt = ot % D_TILES;
#pragma unroll
                for (int e = 0; e < o[j].num_elements; ++e)
                    o[j].x[e] *= alpha_s[rt * 16 + (int)rowid.x[e]];
#pragma unroll
                for (int k = 0; k < TILE_T / 16; ++k) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, KV_T, wmma::row_major> a;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, KV_T, wmma::row_major> bv;
                    wmma::load_matrix_sync(a, ps + rt * 16 * LP + k * 16, LP);
                    wmma::load_matrix_sync(bv, vs + k * 16 * LD + dt * 16, LD);
                    wmma::mma_sync(o[j], a, bv, o[j]);
                }
            }
        }
    }
    copy_wait<0>();

    // Row sums over the row's threads; O to shared memory (where the K/V tiles were).
    if (softmax_thread) {
        float l = l_run;
#pragma unroll
        for (int off = TPR / 2; off > 0; off >>= 1) l += __shfl_xor_sync(0xffffffffu, l, off);
        if (threadIdx.x % TPR == 0) {
            m_s[row] = m_run;
            l_s[row] = l;
        }
    }
    __syncthreads();   // every warp is done with the last tile
    float* os = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int j = 0; j < O_PER_WARP; ++j) {
        const int ot = warp + j * NWARPS;
        if (ot < O_TILES)
            wmma::store_matrix_sync(os + (ot / D_TILES) * 16 * LO + (ot % D_TILES) * 16, o[j], LO,
                                    wmma::mem_row_major);
    }
    __syncthreads();

    const long long out_row = (long long)b * num_heads + h0;
    if (nparts == 1) {   // block-uniform: the whole sequence was this block's
        for (int idx = threadIdx.x; idx < nh * HEAD_DIM; idx += TC_THREADS) {
            const int r = idx / HEAD_DIM, d = idx % HEAD_DIM;
            store_value(out + (out_row + r) * HEAD_DIM + d, os[r * LO + d] / l_s[r]);
        }
        return;
    }
    const long long slot0 = (long long)slot_start[b] * num_heads + h0;   // + part * num_heads
    for (int idx = threadIdx.x; idx < nh * HEAD_DIM; idx += TC_THREADS) {
        const int r = idx / HEAD_DIM, d = idx % HEAD_DIM;
        const long long slot = slot0 + (long long)part * num_heads + r;
        part_out[slot * HEAD_DIM + d] = os[r * LO + d] / l_s[r];
        if (d == 0) {
            part_ml[slot * 2] = m_s[r];
            part_ml[slot * 2 + 1] = l_s[r];
        }
    }

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
    float* w = reinterpret_cast<float*>(smem);   // [nh][nparts]; O is no longer needed
    const int lane = threadIdx.x % 32;
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
        KV_T* o = out + (out_row + r) * HEAD_DIM + d4 * 4;
        store_value(o, acc.x);
        store_value(o + 1, acc.y);
        store_value(o + 2, acc.z);
        store_value(o + 3, acc.w);
    }
}
