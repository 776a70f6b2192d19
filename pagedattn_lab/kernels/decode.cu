// Paged decode attention: one new query token per sequence, attending to all its cached
// tokens through its block table (what a serving engine runs at every generation step).
//
//   out[b, h] = softmax(q[b, h] . K_b^T * scale) @ V_b      K_b, V_b: the sequence's pages
//
// Decode reads every cached K and V element once and does ~1 multiply-add per element, so
// it is memory bound: the whole game is reading the pages at full bandwidth.
//
// Thread-to-data mapping (kernel paged_decode_*):
//   grid  = (partitions, num_kv_heads * head_chunks, batch); block = 128 threads.
//   One block handles one sequence b, one KV head, and one partition of the sequence's
//   tokens [part * part_len, min(seq_len, (part + 1) * part_len)) ("split-K", as in
//   flash-decoding / vLLM v2). It computes ALL the query heads that share this KV head
//   (GQA: group = num_heads / num_kv_heads; up to GMAX of them per block), so each K and V
//   row is read from memory once, not once per query head.
//   A token's K row for one head is head_dim contiguous elements. TG = head_dim / VEC
//   consecutive threads (a "thread group") share one token: each loads one 16-byte chunk
//   (VEC = 8 fp16 or 4 fp32 values) of K and of V. The block's groups take different
//   tokens; each group unrolls U tokens per step so that 2*U independent 16-byte loads per
//   thread are in flight before the first is used (blocks of 4-8 query heads, which do
//   more arithmetic per byte, also issue the next step's loads before this step's math).
//   Every group keeps its own online-softmax state (running max m, running sum l, and the
//   weighted sum of V rows for its VEC dimensions). At the end the groups are merged:
//   first inside each warp with shuffles, then across warps in shared memory.
//   With one partition the block writes the final output; with several it writes an
//   fp32 partial result (normalized output + its max and sum) and paged_decode_merge
//   combines the partitions.
//
// Logits are kept in base 2: q is pre-multiplied by scale * log2(e), so exp2f replaces expf.
// Offsets into the cache are computed in 64-bit: a large cache has more than 2^31 elements.

#include <cuda_fp16.h>

// Tuning knobs (NVRTC -D options; the defaults won on an H100, see benchmarks/NOTES.md).
#ifndef DECODE_UNROLL
#define DECODE_UNROLL 4        // tokens per thread group per step, blocks of 1-2 query heads
#endif
#ifndef DECODE_UNROLL_GQA
#define DECODE_UNROLL_GQA 2    // the same for blocks of 4-8 query heads (more registers each)
#endif
#ifndef DECODE_PREFETCH_GROUP
#define DECODE_PREFETCH_GROUP 4    // blocks of at least this many heads prefetch the next step
#endif
#define NEG_INF __int_as_float(0xff800000)
// A finite "minus infinity" for running maxima: exp2f(NEG_BIG - NEG_BIG) is 1, never NaN.
#define NEG_BIG (-3.402823466e+38f)

// ---- 16-byte vectors of T, converted to float --------------------------------------------

__device__ inline void load_chunk(const float* p, float* out)  // 4 floats
{
    float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
}

__device__ inline void load_chunk(const __half* p, float* out)  // 8 halves
{
    uint4 v = *reinterpret_cast<const uint4*>(p);
    const __half* h = reinterpret_cast<const __half*>(&v);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = __half2float(h[i]);
}

__device__ inline void store_value(float* p, float x) { *p = x; }
__device__ inline void store_value(__half* p, float x) { *p = __float2half(x); }

// The same 16 bytes, loaded raw now and converted later (for software prefetching).
__device__ inline void unpack_chunk(const uint4& raw, float* out, float)
{
    const float* f = reinterpret_cast<const float*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = f[i];
}

__device__ inline void unpack_chunk(const uint4& raw, float* out, __half)
{
    const __half* h = reinterpret_cast<const __half*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = __half2float(h[i]);
}

// Issue the K and V loads of one step: token base + u * ngroups + grp for u < U (a token
// past the end is replaced by the last one, so every load is valid; it is masked later).
template <typename T, int U>
__device__ inline void load_step(const T* k_cache, const T* v_cache, const int* table,
                                 int base, int end, int ngroups, int grp, int page_size,
                                 int page_shift, long long page_stride, long long row_stride,
                                 long long head_off, uint4 (&kraw)[U], uint4 (&vraw)[U])
{
#pragma unroll
    for (int u = 0; u < U; ++u) {
        int t = min(base + u * ngroups + grp, end - 1);
        int vpage = page_shift >= 0 ? (t >> page_shift) : (t / page_size);
        int offset = t - vpage * page_size;
        long long page = table[vpage];      // widen before multiplying by the strides
        long long e = page * page_stride + offset * row_stride + head_off;
        kraw[u] = *reinterpret_cast<const uint4*>(k_cache + e);
        vraw[u] = *reinterpret_cast<const uint4*>(v_cache + e);
    }
}

// ---- the partition kernel ----------------------------------------------------------------

template <typename T, int GMAX>
__device__ inline void decode_partition(
    const T* __restrict__ q,             // [batch, num_heads, head_dim]
    const T* __restrict__ k_cache,       // [num_pages, page_size, num_kv_heads, head_dim]
    const T* __restrict__ v_cache,
    const int* __restrict__ block_tables,  // [batch, max_pages]
    const int* __restrict__ seq_lens,      // [batch]
    T* __restrict__ out,                 // [batch, num_heads, head_dim]  (max_parts == 1)
    float* __restrict__ part_out,        // [batch, num_heads, max_parts, head_dim]
    float* __restrict__ part_ml,         // [batch, num_heads, max_parts, 2]  (max, sum)
    int num_heads, int num_kv_heads, int head_dim, int page_size, int page_shift,
    int max_pages, int part_len, int max_parts, float scale_log2)
{
    constexpr int VEC = 16 / (int)sizeof(T);   // elements per 16-byte chunk
    constexpr int U = GMAX >= 4 ? DECODE_UNROLL_GQA : DECODE_UNROLL;   // loads in flight
    constexpr bool PREFETCH = GMAX >= DECODE_PREFETCH_GROUP;
    extern __shared__ float smem[];

    const int b = blockIdx.z;
    const int part = blockIdx.x;
    const int group = num_heads / num_kv_heads;       // query heads per KV head
    const int chunks = (group + GMAX - 1) / GMAX;     // blocks per KV head when group > GMAX
    const int kvh = blockIdx.y / chunks;
    const int h0 = kvh * group + (blockIdx.y % chunks) * GMAX;  // first query head here
    const int nh = min(GMAX, kvh * group + group - h0);         // query heads here

    const int seq_len = seq_lens[b];
    const int start = part * part_len;
    if (start >= seq_len) return;  // the whole block leaves together, before any barrier
    const int end = min(seq_len, start + part_len);

    const int tg = head_dim / VEC;          // threads per token (a power of two, <= 32)
    const int gl = threadIdx.x % tg;        // this thread's chunk: dims gl*VEC .. +VEC-1
    const int grp = threadIdx.x / tg;       // this thread's group
    const int ngroups = blockDim.x / tg;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;

    // This thread's slice of each query head, pre-scaled into base-2 logits.
    float qr[GMAX][VEC];
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
        if (g < nh) {
            load_chunk(q + ((long long)b * num_heads + h0 + g) * head_dim + gl * VEC, qr[g]);
#pragma unroll
            for (int i = 0; i < VEC; ++i) qr[g][i] *= scale_log2;
        } else {
#pragma unroll
            for (int i = 0; i < VEC; ++i) qr[g][i] = 0.0f;
        }
    }

    float m[GMAX], l[GMAX], acc[GMAX][VEC];
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
        m[g] = NEG_BIG;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[g][i] = 0.0f;
    }

    const int* table = block_tables + (long long)b * max_pages;
    const long long row_stride = (long long)num_kv_heads * head_dim;   // one token
    const long long page_stride = (long long)page_size * row_stride;  // one page
    const long long head_off = (long long)kvh * head_dim + gl * VEC;

    // Block-uniform loop: every thread runs the same number of steps (shuffles need all).
    // Each step loads U tokens per group (2*U independent 16-byte loads per thread); with
    // PREFETCH the next step's loads are issued before this step's arithmetic.
    const int step = ngroups * U;
    uint4 kraw[U], vraw[U];
    if (PREFETCH)
        load_step<T, U>(k_cache, v_cache, table, start, end, ngroups, grp, page_size, page_shift,
                        page_stride, row_stride, head_off, kraw, vraw);
    for (int base = start; base < end; base += step) {
        if (!PREFETCH)
            load_step<T, U>(k_cache, v_cache, table, base, end, ngroups, grp, page_size,
                            page_shift, page_stride, row_stride, head_off, kraw, vraw);
        float kf[U][VEC], vf[U][VEC];
        bool valid[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            valid[u] = base + u * ngroups + grp < end;   // neighbouring groups: neighbouring tokens
            unpack_chunk(kraw[u], kf[u], T());
            unpack_chunk(vraw[u], vf[u], T());
        }
        if (PREFETCH && base + step < end)   // block-uniform
            load_step<T, U>(k_cache, v_cache, table, base + step, end, ngroups, grp, page_size,
                            page_shift, page_stride, row_stride, head_off, kraw, vraw);
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
            float s[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float dot = 0.0f;
#pragma unroll
                for (int i = 0; i < VEC; ++i) dot += qr[g][i] * kf[u][i];
                for (int off = tg >> 1; off > 0; off >>= 1)   // sum over the group
                    dot += __shfl_xor_sync(0xffffffffu, dot, off);
                s[u] = valid[u] ? dot : NEG_INF;
            }
            float m_new = m[g];
#pragma unroll
            for (int u = 0; u < U; ++u) m_new = fmaxf(m_new, s[u]);
            float alpha = exp2f(m[g] - m_new);   // rescales what was summed so far
            m[g] = m_new;
            l[g] *= alpha;
#pragma unroll
            for (int i = 0; i < VEC; ++i) acc[g][i] *= alpha;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float p = exp2f(s[u] - m_new);   // 0 for a masked token
                l[g] += p;
#pragma unroll
                for (int i = 0; i < VEC; ++i) acc[g][i] += p * vf[u][i];
            }
        }
    }

    // Merge the groups of each warp (butterfly: every lane ends with the warp's result).
    for (int off = tg; off < 32; off <<= 1) {
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
            float m_o = __shfl_xor_sync(0xffffffffu, m[g], off);
            float l_o = __shfl_xor_sync(0xffffffffu, l[g], off);
            float m_new = fmaxf(m[g], m_o);
            float a = exp2f(m[g] - m_new), c = exp2f(m_o - m_new);
            l[g] = l[g] * a + l_o * c;
            m[g] = m_new;
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                float acc_o = __shfl_xor_sync(0xffffffffu, acc[g][i], off);
                acc[g][i] = acc[g][i] * a + acc_o * c;
            }
        }
    }

    // Merge the warps in shared memory: [nwarps][GMAX] maxima, sums, [nwarps][GMAX][head_dim].
    float* s_m = smem;
    float* s_l = s_m + nwarps * GMAX;
    float* s_acc = s_l + nwarps * GMAX;
    if (lane < tg) {   // the warp's first group holds the merged values
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
            if (lane == 0) {
                s_m[warp * GMAX + g] = m[g];
                s_l[warp * GMAX + g] = l[g];
            }
#pragma unroll
            for (int i = 0; i < VEC; ++i)
                s_acc[(warp * GMAX + g) * head_dim + gl * VEC + i] = acc[g][i];
        }
    }
    __syncthreads();

    for (int idx = threadIdx.x; idx < nh * head_dim; idx += blockDim.x) {
        int g = idx / head_dim, d = idx % head_dim;
        float m_all = NEG_BIG;
        for (int w = 0; w < nwarps; ++w) m_all = fmaxf(m_all, s_m[w * GMAX + g]);
        float l_all = 0.0f, o = 0.0f;
        for (int w = 0; w < nwarps; ++w) {
            float c = exp2f(s_m[w * GMAX + g] - m_all);
            l_all += s_l[w * GMAX + g] * c;
            o += s_acc[(w * GMAX + g) * head_dim + d] * c;
        }
        long long row = (long long)b * num_heads + h0 + g;
        if (max_parts == 1) {
            store_value(out + row * head_dim + d, o / l_all);
        } else {
            long long slot = row * max_parts + part;
            part_out[slot * head_dim + d] = o / l_all;
            if (d == 0) {
                part_ml[slot * 2] = m_all;
                part_ml[slot * 2 + 1] = l_all;
            }
        }
    }
}

// One kernel per (cache dtype, GMAX = largest query-head group a block handles).
// The wrapper picks the smallest GMAX >= group (8 when the group is larger; then
// head_chunks = ceil(group / 8) blocks share a KV head). The 4-head kernels are capped at
// 128 registers so that 4 blocks fit on an SM (measured: 0.315 ms instead of 0.347 ms on
// the GQA workload); for 8 heads the cap spills and loses.
#define DECODE_THREADS 128
#define DECODE_PASS                                                                           \
    q, k_cache, v_cache, block_tables, seq_lens, out, part_out, part_ml, num_heads,          \
    num_kv_heads, head_dim, page_size, page_shift, max_pages, part_len, max_parts, scale_log2

extern "C" __global__ void paged_decode_f32_g1(
    const float* __restrict__ q, const float* __restrict__ k_cache,
    const float* __restrict__ v_cache, const int* __restrict__ block_tables,
    const int* __restrict__ seq_lens, float* __restrict__ out, float* __restrict__ part_out,
    float* __restrict__ part_ml, int num_heads, int num_kv_heads, int head_dim,
    int page_size, int page_shift, int max_pages, int part_len, int max_parts,
    float scale_log2)
{
    decode_partition<float, 1>(DECODE_PASS);
}

extern "C" __global__ void paged_decode_f32_g2(
    const float* __restrict__ q, const float* __restrict__ k_cache,
    const float* __restrict__ v_cache, const int* __restrict__ block_tables,
    const int* __restrict__ seq_lens, float* __restrict__ out, float* __restrict__ part_out,
    float* __restrict__ part_ml, int num_heads, int num_kv_heads, int head_dim,
    int page_size, int page_shift, int max_pages, int part_len, int max_parts,
    float scale_log2)
{
    decode_partition<float, 2>(DECODE_PASS);
}

extern "C" __global__ void __launch_bounds__(DECODE_THREADS, 4) paged_decode_f32_g4(
    const float* __restrict__ q, const float* __restrict__ k_cache,
    const float* __restrict__ v_cache, const int* __restrict__ block_tables,
    const int* __restrict__ seq_lens, float* __restrict__ out, float* __restrict__ part_out,
    float* __restrict__ part_ml, int num_heads, int num_kv_heads, int head_dim,
    int page_size, int page_shift, int max_pages, int part_len, int max_parts,
    float scale_log2)
{
    decode_partition<float, 4>(DECODE_PASS);
}

extern "C" __global__ void paged_decode_f32_g8(
    const float* __restrict__ q, const float* __restrict__ k_cache,
    const float* __restrict__ v_cache, const int* __restrict__ block_tables,
    const int* __restrict__ seq_lens, float* __restrict__ out, float* __restrict__ part_out,
    float* __restrict__ part_ml, int num_heads, int num_kv_heads, int head_dim,
    int page_size, int page_shift, int max_pages, int part_len, int max_parts,
    float scale_log2)
{
    decode_partition<float, 8>(DECODE_PASS);
}

extern "C" __global__ void paged_decode_f16_g1(
    const __half* __restrict__ q, const __half* __restrict__ k_cache,
    const __half* __restrict__ v_cache, const int* __restrict__ block_tables,
    const int* __restrict__ seq_lens, __half* __restrict__ out, float* __restrict__ part_out,
    float* __restrict__ part_ml, int num_heads, int num_kv_heads, int head_dim,
    int page_size, int page_shift, int max_pages, int part_len, int max_parts,
    float scale_log2)
{
    decode_partition<__half, 1>(DECODE_PASS);
}

extern "C" __global__ void paged_decode_f16_g2(
    const __half* __restrict__ q, const __half* __restrict__ k_cache,
    const __half* __restrict__ v_cache, const int* __restrict__ block_tables,
    const int* __restrict__ seq_lens, __half* __restrict__ out, float* __restrict__ part_out,
    float* __restrict__ part_ml, int num_heads, int num_kv_heads, int head_dim,
    int page_size, int page_shift, int max_pages, int part_len, int max_parts,
    float scale_log2)
{
    decode_partition<__half, 2>(DECODE_PASS);
}

extern "C" __global__ void __launch_bounds__(DECODE_THREADS, 4) paged_decode_f16_g4(
    const __half* __restrict__ q, const __half* __restrict__ k_cache,
    const __half* __restrict__ v_cache, const int* __restrict__ block_tables,
    const int* __restrict__ seq_lens, __half* __restrict__ out, float* __restrict__ part_out,
    float* __restrict__ part_ml, int num_heads, int num_kv_heads, int head_dim,
    int page_size, int page_shift, int max_pages, int part_len, int max_parts,
    float scale_log2)
{
    decode_partition<__half, 4>(DECODE_PASS);
}

extern "C" __global__ void paged_decode_f16_g8(
    const __half* __restrict__ q, const __half* __restrict__ k_cache,
    const __half* __restrict__ v_cache, const int* __restrict__ block_tables,
    const int* __restrict__ seq_lens, __half* __restrict__ out, float* __restrict__ part_out,
    float* __restrict__ part_ml, int num_heads, int num_kv_heads, int head_dim,
    int page_size, int page_shift, int max_pages, int part_len, int max_parts,
    float scale_log2)
{
    decode_partition<__half, 8>(DECODE_PASS);
}


// ---- the merge kernel --------------------------------------------------------------------
// Thread-to-data mapping: grid = (num_heads, batch); one block per (sequence, query head);
// thread d (striding by blockDim) combines dimension d of the sequence's partitions:
//   out = sum_p w_p * o_p / sum_p w_p,   w_p = l_p * 2^(m_p - max_p m_p)
// (each o_p is already normalized by its own l_p, so w_p weighs it by its share).

template <typename T>
__device__ inline void decode_merge(const float* __restrict__ part_out,
                                    const float* __restrict__ part_ml,
                                    const int* __restrict__ seq_lens, T* __restrict__ out,
                                    int num_heads, int head_dim, int part_len, int max_parts)
{
    const int h = blockIdx.x, b = blockIdx.y;
    const int nparts = (seq_lens[b] + part_len - 1) / part_len;
    const long long row = (long long)b * num_heads + h;
    const float* ml = part_ml + row * max_parts * 2;
    float m_all = NEG_BIG;
    for (int p = 0; p < nparts; ++p) m_all = fmaxf(m_all, ml[2 * p]);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float l_all = 0.0f, o = 0.0f;
        for (int p = 0; p < nparts; ++p) {
            float w = ml[2 * p + 1] * exp2f(ml[2 * p] - m_all);
            l_all += w;
            o += w * part_out[(row * max_parts + p) * head_dim + d];
        }
        store_value(out + row * head_dim + d, o / l_all);
    }
}

extern "C" __global__ void paged_decode_merge_f32(
    const float* __restrict__ part_out, const float* __restrict__ part_ml,
    const int* __restrict__ seq_lens, float* __restrict__ out, int num_heads, int head_dim,
    int part_len, int max_parts)
{
    decode_merge<float>(part_out, part_ml, seq_lens, out, num_heads, head_dim, part_len,
                        max_parts);
}

extern "C" __global__ void paged_decode_merge_f16(
    const float* __restrict__ part_out, const float* __restrict__ part_ml,
    const int* __restrict__ seq_lens, __half* __restrict__ out, int num_heads, int head_dim,
    int part_len, int max_parts)
{
    decode_merge<__half>(part_out, part_ml, seq_lens, out, num_heads, head_dim, part_len,
                         max_parts);
}
