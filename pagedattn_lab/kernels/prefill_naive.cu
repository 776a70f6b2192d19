// Naive paged prefill (guide step 3, with its bugs fixed): causal attention for every
// token of every sequence, reading K and V through the sequence's block table.
//
//   out[b, t, h] = softmax(q[b, t, h] . K_b[0..t]^T * scale) @ V_b[0..t]
//
// Thread-to-data mapping: grid = (ceil(max_len / blockDim.x), num_heads, batch). One thread
// per query token: thread t of sequence b and query head h walks keys 0..t one at a time,
// keeping an online softmax (running max, running sum) and a head_dim-long accumulator in
// a per-thread array. Simple and correct, and slow: every thread re-reads every key and
// value from memory with no reuse, and the array lives in local memory.
//
// What the guide got wrong, fixed here:
//   - one page table for the whole batch: each sequence has its own block table row;
//   - the head offset forgot num_kv_heads: a token's row holds num_kv_heads heads, so
//     element (slot, kv_head, d) sits at (slot * num_kv_heads + kv_head) * head_dim + d;
//   - no GQA: query head h reads KV head h / (num_heads / num_kv_heads);
//   - padded rows were left unwritten: rows at or past seq_len are written as zeros;
//   - the key pointer was recomputed for every dimension: once per key is enough.

#include <cuda_fp16.h>

#define NAIVE_MAX_HEAD_DIM 128
#define NEG_INF __int_as_float(0xff800000)

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__half x) { return __half2float(x); }
__device__ inline void store_value(float* p, float x) { *p = x; }
__device__ inline void store_value(__half* p, float x) { *p = __float2half(x); }

template <typename T>
__device__ inline void naive_prefill(
    const T* q,              // [batch, max_len, num_heads, head_dim]
    const T* k_cache,        // [num_pages, page_size, num_kv_heads, head_dim]
    const T* v_cache,
    const int* block_tables, // [batch, max_pages]
    const int* seq_lens,     // [batch]
    T* out,                  // [batch, max_len, num_heads, head_dim]
    int max_len, int num_heads, int num_kv_heads, int head_dim, int page_size,
    int max_pages, float scale)
{
    int b = blockIdx.z;
    int h = blockIdx.y;
    int t = blockIdx.x * blockDim.x + threadIdx.x;   // this thread's query token
    if (t >= max_len) return;                        // no barrier in this kernel: safe

    long long row = ((long long)b * max_len + t) * num_heads + h;   // q / out row
    if (t >= seq_lens[b]) {                          // padding row: defined as zeros
        for (int d = 0; d < head_dim; ++d) store_value(out + row * head_dim + d, 0.0f);
        return;
    }

    int kv_head = h / (num_heads / num_kv_heads);    // GQA: a group shares one KV head
    const int* table = block_tables + (long long)b * max_pages;   // this sequence's row
    const T* q_row = q + row * head_dim;

    float max_score = NEG_INF;
    float sum_exp = 0.0f;
    float acc[NAIVE_MAX_HEAD_DIM];
    for (int d = 0; d < head_dim; ++d) acc[d] = 0.0f;

    for (int key = 0; key <= t; ++key) {             // causal: keys 0..t
        int page = table[key / page_size];
        long long slot = (long long)page * page_size + key % page_size;
        long long offset = (slot * num_kv_heads + kv_head) * head_dim;
        const T* k_row = k_cache + offset;
        const T* v_row = v_cache + offset;

        float score = 0.0f;
        for (int d = 0; d < head_dim; ++d) score += to_float(q_row[d]) * to_float(k_row[d]);
        score *= scale;

        // Online softmax: rescale what was accumulated so far to the new maximum.
        float new_max = fmaxf(max_score, score);
        float correction = expf(max_score - new_max);   // 0 on the first key
        float weight = expf(score - new_max);
        sum_exp = sum_exp * correction + weight;
        for (int d = 0; d < head_dim; ++d)
            acc[d] = acc[d] * correction + weight * to_float(v_row[d]);
        max_score = new_max;
    }

    for (int d = 0; d < head_dim; ++d) store_value(out + row * head_dim + d, acc[d] / sum_exp);
}

extern "C" __global__ void prefill_naive_f32(
    const float* q, const float* k_cache, const float* v_cache, const int* block_tables,
    const int* seq_lens, float* out, int max_len, int num_heads, int num_kv_heads,
    int head_dim, int page_size, int max_pages, float scale)
{
    naive_prefill<float>(q, k_cache, v_cache, block_tables, seq_lens, out, max_len, num_heads,
                         num_kv_heads, head_dim, page_size, max_pages, scale);
}

extern "C" __global__ void prefill_naive_f16(
    const __half* q, const __half* k_cache, const __half* v_cache, const int* block_tables,
    const int* seq_lens, __half* out, int max_len, int num_heads, int num_kv_heads,
    int head_dim, int page_size, int max_pages, float scale)
{
    naive_prefill<__half>(q, k_cache, v_cache, block_tables, seq_lens, out, max_len, num_heads,
                          num_kv_heads, head_dim, page_size, max_pages, scale);
}
