// Quantizing cache write: vLLM's "reshape and cache" for int8 / fp8 (e4m3) pages.
// Like cache_write.cu, token i's K and V rows go to slot slot_mapping[i] (-1: skip); here
// each element is stored as a one-byte code of x / scale (kv_quant.cuh).
//
// Compile-time: KV_QUANT (1 int8, 2 fp8 e4m3), SRC (float or __half: the new rows' type),
// PER_TOKEN_SCALES (0: static scales k_scale[kv_head], read; 1: a scale per (token, KV
// head) = amax over head_dim / qmax, computed here and written to k_scale[slot][kv_head],
// an array laid out like the pages: [num_pages, page_size, num_kv_heads]).
//
// Thread-to-data mapping: one block per new token, one warp per KV head of it (warps stride
// over the heads). A warp's lanes stride over head_dim, so loads and stores are coalesced;
// for per-token scales the warp reduces its row's amax with shuffles (no shared memory).

#include "common.cuh"
#include "kv_quant.cuh"

#ifndef SRC
#define SRC float
#endif

// One warp writes one head's row of one token; scales: see the header.
__device__ inline void quantize_row(const SRC* x, unsigned char* dst, float* scales,
                                    long long scale_index, int head_dim, int lane)
{
#if PER_TOKEN_SCALES
    float amax = 0.0f;
    for (int i = lane; i < head_dim; i += 32) amax = fmaxf(amax, fabsf(to_float(x[i])));
    for (int offset = 16; offset > 0; offset >>= 1)
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    // an all-zero row: any scale; a tiny one: at least the smallest normal float32, which
    // -ftz would otherwise flush amax / KV_QMAX to (a scale of 0: x / 0 saturates, 0 / 0 NaN)
    const float scale = amax > 0.0f ? fmaxf(amax / KV_QMAX, 1.17549435e-38f) : 1.0f;
    if (lane == 0) scales[scale_index] = scale;
#else
    const float scale = scales[scale_index];
#endif
    for (int i = lane; i < head_dim; i += 32) dst[i] = quantize_code(to_float(x[i]) / scale);
}

extern "C" __global__ void write_kv_quant(const SRC* __restrict__ k,   // [n_tokens, heads, dim]
                                          const SRC* __restrict__ v,
                                          const long long* __restrict__ slot_mapping,
                                          int n_tokens, int num_kv_heads, int head_dim,
                                          float* __restrict__ k_scale,  // see the header
                                          float* __restrict__ v_scale,
                                          unsigned char* __restrict__ k_cache,  // [slots, heads, dim]
                                          unsigned char* __restrict__ v_cache)
{
    const int token = blockIdx.x;
    if (token >= n_tokens) return;   // safe: no barrier below
    const long long slot = slot_mapping[token];
    if (slot < 0) return;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int head = warp; head < num_kv_heads; head += blockDim.x / 32) {   // warp-uniform
        const long long src = ((long long)token * num_kv_heads + head) * head_dim;
        const long long dst = (slot * num_kv_heads + head) * head_dim;
        const long long scale_index = PER_TOKEN_SCALES ? slot * num_kv_heads + head : head;
        quantize_row(k + src, k_cache + dst, k_scale, scale_index, head_dim, lane);
        quantize_row(v + src, v_cache + dst, v_scale, scale_index, head_dim, lane);
    }
}
