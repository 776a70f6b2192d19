// Tiled paged prefill (guide step 4, what its "optimized" kernel meant to be): causal
// attention where a tile of queries shares every K/V tile it loads (flash attention on a
// paged cache, in plain CUDA C: no tensor cores, fp32 arithmetic).
//
// Thread-to-data mapping: grid = (num_heads, batch, ceil(max_len / 64)); block = 128 threads
// (4 warps). A block owns 64 query rows of one (sequence, head). The query tile is the
// slowest grid index and runs last tile first: the tiles with the most keys (causal) start
// first and the short ones fill in at the end. Its 4 warps own 16 rows
// each. Inside a warp, lane = 8 * rg + cg: the lane owns rows {rg, rg+4, rg+8, rg+12} of
// its warp's 16, and for each K/V tile of 32 keys
//   - scores S = Q K^T: keys {cg, cg+8, cg+16, cg+24}, a 4x4 micro-tile in registers;
//   - output O += P V: dimensions {4cg..4cg+3, 32+4cg..} (head_dim/32 chunks of 4),
//     a 4 x head_dim/8 micro-tile in registers.
// The 8 lanes that share rows (same rg) together hold a whole row of S: row maxima and
// sums are shuffle reductions over those 8 lanes. Online softmax keeps a running max and
// sum per row, so S never leaves the registers except as P (a warp-private slice of shared
// memory that O = P V reads back).
//
// Shared memory (floats): Q tile [64][hd+4] (pre-scaled into base-2 logits), K and V tiles
// [32][hd+4], P [64][40]. The padding makes every access pattern conflict-free: the 16-byte
// reads of a warp touch 8 distinct 16-byte chunks that cover all 32 banks, or broadcast.
// The next K/V tile is loaded from the paged cache into registers while this one is
// computed (software prefetch), then stored to shared memory between two barriers.
// Causality: key tiles past the block's last query are never loaded; tiles crossing the
// diagonal are masked element-wise; a warp whose rows are all before a tile skips it.
// Every barrier is reached by every thread: the only early exit (a tile wholly past the
// sequence's end) is taken by the whole block before the first barrier.

#include <cuda_fp16.h>

#define BQ 64              // query rows per block
#define BK 32              // keys per K/V tile
#define TILED_THREADS 128  // the launch must use exactly this many threads
#define NEG_INF __int_as_float(0xff800000)
#define NEG_BIG (-3.402823466e+38f)

__device__ inline void load_chunk(const float* p, float* out)  // 16 bytes: 4 floats
{
    float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
}

__device__ inline void load_chunk(const __half* p, float* out)  // 16 bytes: 8 halves
{
    uint4 v = *reinterpret_cast<const uint4*>(p);
    const __half* h = reinterpret_cast<const __half*>(&v);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = __half2float(h[i]);
}

__device__ inline void store_value(float* p, float x) { *p = x; }
__device__ inline void store_value(__half* p, float x) { *p = __float2half(x); }

// Load this thread's share of keys k0..k0+BK-1 (K and V rows) into registers, following
// the block table; keys at or past seq_len become zeros (they are masked, but 0 * garbage
// could still be NaN).
template <typename T, int HD>
__device__ inline void load_kv_tile(const T* k_cache, const T* v_cache, const int* table,
                                    int k0, int seq_len, int page_size, int page_shift,
                                    long long row_stride, long long head_off,
                                    float (&kr)[BK * HD / TILED_THREADS],
                                    float (&vr)[BK * HD / TILED_THREADS])
{
    constexpr int VEC = 16 / (int)sizeof(T);
    constexpr int CPR = HD / VEC;                       // 16-byte chunks per row
    constexpr int N = BK * CPR / TILED_THREADS;         // chunks per thread
#pragma unroll
    for (int c = 0; c < N; ++c) {
        int idx = threadIdx.x + c * TILED_THREADS;
        int key = k0 + idx / CPR, col = (idx % CPR) * VEC;
        if (key < seq_len) {
            int vpage = page_shift >= 0 ? (key >> page_shift) : (key / page_size);
            long long slot = (long long)table[vpage] * page_size + (key - vpage * page_size);
            long long e = slot * row_stride + head_off + col;
            load_chunk(k_cache + e, &kr[c * VEC]);
            load_chunk(v_cache + e, &vr[c * VEC]);
        } else {
#pragma unroll
            for (int i = 0; i < VEC; ++i) kr[c * VEC + i] = vr[c * VEC + i] = 0.0f;
        }
    }
}

template <typename T, int HD>
__device__ inline void tiled_prefill(
    const T* __restrict__ q,             // [batch, max_len, num_heads, HD]
    const T* __restrict__ k_cache,       // [num_pages, page_size, num_kv_heads, HD]
    const T* __restrict__ v_cache,
    const int* __restrict__ block_tables,  // [batch, max_pages]
    const int* __restrict__ seq_lens,      // [batch]
    T* __restrict__ out,                 // [batch, max_len, num_heads, HD]
    int max_len, int num_heads, int num_kv_heads, int page_size, int page_shift,
    int max_pages, float scale_log2)
{
    constexpr int VEC = 16 / (int)sizeof(T);
    constexpr int CPR = HD / VEC;
    constexpr int LDQ = HD + 4, LDK = HD + 4, LDP = BK + 8;
    constexpr int NE = HD / 32;                          // 4-wide column chunks of O per lane
    constexpr int NKV = BK * HD / TILED_THREADS;         // prefetch registers per thread
    extern __shared__ float smem[];
    float* sQ = smem;                 // [BQ][LDQ]
    float* sK = sQ + BQ * LDQ;        // [BK][LDK]
    float* sV = sK + BK * LDK;        // [BK][LDK]
    float* sP = sV + BK * LDK;        // [BQ][LDP]

    const int h = blockIdx.x, b = blockIdx.y;
    const int q0 = (gridDim.z - 1 - blockIdx.z) * BQ;   // longest (latest) tiles start first
    const int seq_len = seq_lens[b];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int rg = lane / 8, cg = lane % 8;
    const int kv_head = h / (num_heads / num_kv_heads);
    const long long tok_stride = (long long)num_heads * HD;   // q/out: one token
    const T* q_seq = q + (long long)b * max_len * tok_stride + (long long)h * HD;
    T* out_seq = out + (long long)b * max_len * tok_stride + (long long)h * HD;

    if (q0 >= seq_len) {   // the whole tile is padding: write zeros; the block leaves together
        for (int idx = tid; idx < BQ * HD; idx += TILED_THREADS) {
            int t = q0 + idx / HD;
            if (t < max_len) store_value(out_seq + t * tok_stride + idx % HD, 0.0f);
        }
        return;
    }

    // Q tile -> shared memory, pre-scaled so that scores come out in base 2.
    for (int idx = tid; idx < BQ * CPR; idx += TILED_THREADS) {
        int r = idx / CPR, col = (idx % CPR) * VEC;
        float v[VEC];
        if (q0 + r < seq_len) {
            load_chunk(q_seq + (q0 + r) * tok_stride + col, v);
        } else {
#pragma unroll
            for (int i = 0; i < VEC; ++i) v[i] = 0.0f;
        }
#pragma unroll
        for (int i = 0; i < VEC; ++i) sQ[r * LDQ + col + i] = v[i] * scale_log2;
    }

    const int* table = block_tables + (long long)b * max_pages;
    const long long row_stride = (long long)num_kv_heads * HD;
    const long long head_off = (long long)kv_head * HD;
    const int n_tiles = (min(q0 + BQ, seq_len) + BK - 1) / BK;   // causal: keys < q0 + BQ

    float o[4][NE * 4], m[4], l[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        m[i] = NEG_BIG;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < NE * 4; ++c) o[i][c] = 0.0f;
    }
    const int row0 = warp * 16 + rg;   // this lane's rows: row0 + 4 * i

    float kr[NKV], vr[NKV];
    load_kv_tile<T, HD>(k_cache, v_cache, table, 0, seq_len, page_size, page_shift, row_stride,
                        head_off, kr, vr);

    for (int kt = 0; kt < n_tiles; ++kt) {
        const int k0 = kt * BK;
        __syncthreads();   // all warps are done with the previous K/V tile (and sQ is written)
#pragma unroll
        for (int c = 0; c < NKV / VEC; ++c) {
            int idx = tid + c * TILED_THREADS;
            int r = idx / CPR, col = (idx % CPR) * VEC;
#pragma unroll
            for (int i = 0; i < VEC; i += 4) {   // 16-byte stores
                float4 kv, vv;
                kv.x = kr[c * VEC + i]; kv.y = kr[c * VEC + i + 1];
                kv.z = kr[c * VEC + i + 2]; kv.w = kr[c * VEC + i + 3];
                vv.x = vr[c * VEC + i]; vv.y = vr[c * VEC + i + 1];
                vv.z = vr[c * VEC + i + 2]; vv.w = vr[c * VEC + i + 3];
                *reinterpret_cast<float4*>(&sK[r * LDK + col + i]) = kv;
                *reinterpret_cast<float4*>(&sV[r * LDK + col + i]) = vv;
            }
        }
        __syncthreads();   // the tile is in shared memory
        if (kt + 1 < n_tiles)  // block-uniform: prefetch the next tile while computing this one
            load_kv_tile<T, HD>(k_cache, v_cache, table, k0 + BK, seq_len, page_size, page_shift,
                                row_stride, head_off, kr, vr);

        if (k0 > q0 + warp * 16 + 15) continue;   // every key is after every row of this warp

        // S = Q K^T for rows row0 + 4i, keys cg + 8j.
        float s[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) s[i][j] = 0.0f;
#pragma unroll
        for (int d = 0; d < HD; d += 4) {
            float4 qa[4], kb[4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
                qa[i] = *reinterpret_cast<const float4*>(&sQ[(row0 + 4 * i) * LDQ + d]);
#pragma unroll
            for (int j = 0; j < 4; ++j)
                kb[j] = *reinterpret_cast<const float4*>(&sK[(cg + 8 * j) * LDK + d]);
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    s[i][j] += qa[i].x * kb[j].x + qa[i].y * kb[j].y + qa[i].z * kb[j].z +
                               qa[i].w * kb[j].w;
        }

        // Causal mask on tiles that cross the diagonal, then the online-softmax update.
        const bool diagonal = k0 + BK - 1 > q0 + warp * 16;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int qpos = q0 + row0 + 4 * i;
            float mx = NEG_INF;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (diagonal && k0 + cg + 8 * j > qpos) s[i][j] = NEG_INF;
                mx = fmaxf(mx, s[i][j]);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
            const float m_new = fmaxf(m[i], mx);
            const float alpha = exp2f(m[i] - m_new);
            m[i] = m_new;
            float rowsum = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float p = exp2f(s[i][j] - m_new);
                rowsum += p;
                sP[(row0 + 4 * i) * LDP + cg + 8 * j] = p;
            }
            l[i] = l[i] * alpha + rowsum;   // this lane's share; summed over the 8 at the end
#pragma unroll
            for (int c = 0; c < NE * 4; ++c) o[i][c] *= alpha;
        }
        __syncwarp();   // P rows are private to this warp

        // O += P V: rows row0 + 4i, dims e*32 + 4cg .. +3.
#pragma unroll
        for (int k = 0; k < BK; k += 4) {
            float p[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                float4 pv = *reinterpret_cast<const float4*>(&sP[(row0 + 4 * i) * LDP + k]);
                p[i][0] = pv.x; p[i][1] = pv.y; p[i][2] = pv.z; p[i][3] = pv.w;
            }
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
                for (int e = 0; e < NE; ++e) {
                    float4 vb = *reinterpret_cast<const float4*>(
                        &sV[(k + kk) * LDK + e * 32 + cg * 4]);
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        o[i][e * 4 + 0] += p[i][kk] * vb.x;
                        o[i][e * 4 + 1] += p[i][kk] * vb.y;
                        o[i][e * 4 + 2] += p[i][kk] * vb.z;
                        o[i][e * 4 + 3] += p[i][kk] * vb.w;
                    }
                }
            }
        }
        __syncwarp();   // P is read before the next tile overwrites it
    }

    // Finish: total row sums over the 8 lanes of a row, normalize, write (zeros past the end).
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float lt = l[i];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        lt += __shfl_xor_sync(0xffffffffu, lt, 4);
        const int t = q0 + row0 + 4 * i;
        if (t >= max_len) continue;
        const float inv = t < seq_len ? 1.0f / lt : 0.0f;
        T* dst = out_seq + t * tok_stride;
#pragma unroll
        for (int e = 0; e < NE; ++e)
#pragma unroll
            for (int c = 0; c < 4; ++c)
                store_value(dst + e * 32 + cg * 4 + c, t < seq_len ? o[i][e * 4 + c] * inv : 0.0f);
    }
}

// Shared memory per block, in bytes: (BQ*(HD+4) + 2*BK*(HD+4) + BQ*(BK+8)) * 4
//   head_dim 64: 45056 (fits the default 48 KB); head_dim 128: 77824 (needs the opt-in).
extern "C" __global__ void prefill_tiled_f32_d64(
    const float* __restrict__ q, const float* __restrict__ k_cache,
    const float* __restrict__ v_cache, const int* __restrict__ block_tables,
    const int* __restrict__ seq_lens, float* __restrict__ out, int max_len, int num_heads,
    int num_kv_heads, int page_size, int page_shift, int max_pages, float scale_log2)
{
    tiled_prefill<float, 64>(q, k_cache, v_cache, block_tables, seq_lens, out, max_len,
                             num_heads, num_kv_heads, page_size, page_shift, max_pages,
                             scale_log2);
}

extern "C" __global__ void prefill_tiled_f16_d64(
    const __half* __restrict__ q, const __half* __restrict__ k_cache,
    const __half* __restrict__ v_cache, const int* __restrict__ block_tables,
    const int* __restrict__ seq_lens, __half* __restrict__ out, int max_len, int num_heads,
    int num_kv_heads, int page_size, int page_shift, int max_pages, float scale_log2)
{
    tiled_prefill<__half, 64>(q, k_cache, v_cache, block_tables, seq_lens, out, max_len,
                              num_heads, num_kv_heads, page_size, page_shift, max_pages,
                              scale_log2);
}

extern "C" __global__ void prefill_tiled_f32_d128(
    const float* __restrict__ q, const float* __restrict__ k_cache,
    const float* __restrict__ v_cache, const int* __restrict__ block_tables,
    const int* __restrict__ seq_lens, float* __restrict__ out, int max_len, int num_heads,
    int num_kv_heads, int page_size, int page_shift, int max_pages, float scale_log2)
{
    tiled_prefill<float, 128>(q, k_cache, v_cache, block_tables, seq_lens, out, max_len,
                              num_heads, num_kv_heads, page_size, page_shift, max_pages,
                              scale_log2);
}

extern "C" __global__ void prefill_tiled_f16_d128(
    const __half* __restrict__ q, const __half* __restrict__ k_cache,
    const __half* __restrict__ v_cache, const int* __restrict__ block_tables,
    const int* __restrict__ seq_lens, __half* __restrict__ out, int max_len, int num_heads,
    int num_kv_heads, int page_size, int page_shift, int max_pages, float scale_log2)
{
    tiled_prefill<__half, 128>(q, k_cache, v_cache, block_tables, seq_lens, out, max_len,
                               num_heads, num_kv_heads, page_size, page_shift, max_pages,
                               scale_log2);
}
