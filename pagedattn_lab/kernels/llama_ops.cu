// The Llama decoder's per-layer elementwise work, fused: what the serving engine's GPU step
// would otherwise launch as ~40 small CuPy kernels per layer (engine/model.py, engine/fused.py).
//
//   rms_norm   [residual add +] RMSNorm of each row      one block per row
//   rope_qkv   RoPE on q and k of the packed qkv rows, q written contiguous, k and v written
//              straight to their cache slots (the cache write)      one block per token
//   silu_mul   silu(gate) * up of the packed gate_up rows           one thread per output
//
// Rounding follows the unfused NumPy/CuPy code exactly (greedy tokens must not change): there
// every array op rounds its result to the model's dtype (CuPy and NumPy compute float16 ops in
// float32 and round each result), so here each op's float result goes through round_elem().
// Products use __fmul_rn, which the compiler never contracts into an FMA with a following
// add (that would skip a rounding the unfused code does). Only the RMSNorm's sum of squares
// is accumulated in another order than CuPy's or NumPy's reduction (any two reductions
// differ there); the tests state that tolerance.
//
// Compile-time choice: -DKV_T=float | __half (the model's dtype; common.cuh's element type).
#include "common.cuh"

#define OPS_THREADS 256   // every kernel here runs 256-thread blocks (8 warps)

// x rounded to the model's dtype, back as float: what storing a float16 array result does.
__device__ inline float round_elem(float x)
{
    KV_T r;
    store_value(&r, x);
    return to_float(r);
}

// Sum over the block (256 threads); every thread gets the total. The order is fixed (each
// thread's partial sum, then a butterfly within each warp, then the 8 warp sums the same way),
// so the result does not depend on timing.
__device__ inline float block_sum(float v, float* scratch)
{
    for (int offset = 16; offset > 0; offset /= 2)
        v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, offset));
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < OPS_THREADS / 32 ? scratch[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2)
        v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// out = RMSNorm(x) * weight, row by row, as transformers' LlamaRMSNorm: normalise in float32,
// round to the model's dtype, then multiply by the weight in the model's dtype. With
// add_residual, x is first replaced by x + delta (rounded; written back to x_out, which may be
// x itself: each element is read and written by the same thread).
extern "C" __global__ void rms_norm(const KV_T* x, const KV_T* delta,
                                    const KV_T* __restrict__ weight, KV_T* x_out,
                                    KV_T* __restrict__ out, int rows, int hidden, float eps,
                                    int add_residual)
{
    __shared__ float scratch[OPS_THREADS / 32];
    int row = blockIdx.x;
    if (row >= rows) return;  // uniform per block: the barrier in block_sum is still reached by all
    long long base = (long long)row * hidden;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += OPS_THREADS) {
        float v = to_float(x[base + i]);
        if (add_residual) {
            v = round_elem(__fadd_rn(v, to_float(delta[base + i])));
            store_value(&x_out[base + i], v);
        }
        sum = __fadd_rn(sum, __fmul_rn(v, v));
    }
    float var = __fdiv_rn(block_sum(sum, scratch), (float)hidden);
    float denom = __fsqrt_rn(__fadd_rn(var, eps));
    const KV_T* src = add_residual ? x_out : x;
    for (int i = threadIdx.x; i < hidden; i += OPS_THREADS) {
        float normed = round_elem(__fdiv_rn(to_float(src[base + i]), denom));
        store_value(&out[base + i], __fmul_rn(to_float(weight[i]), normed));
    }
}

// One rotate-half pair (x1 = dimension i, x2 = dimension i + head_dim/2) at angle (c, s),
// each product and each sum rounded as the unfused x1*cos - x2*sin, x2*cos + x1*sin.
__device__ inline void rotate_pair(float x1, float x2, float c, float s, float* r1, float* r2)
{
    *r1 = round_elem(__fsub_rn(round_elem(__fmul_rn(x1, c)), round_elem(__fmul_rn(x2, s))));
    *r2 = round_elem(__fadd_rn(round_elem(__fmul_rn(x2, c)), round_elem(__fmul_rn(x1, s))));
}

// qkv [n_tokens, (heads + 2 * kv_heads) * head_dim] is the fused q|k|v projection. Token t
// sits at positions[t]; cos_table, sin_table [max_pos, head_dim / 2] are float32 (rounded to
// the model's dtype before use, as the unfused code's .astype(dtype)). q_out [n_tokens, heads,
// head_dim] gets rotated q; rotated k and plain v go to slot slots[t] of the caches
// ([slots, kv_heads, head_dim]); slot -1: already cached, nothing written.
// Thread-to-data mapping: one block per token; its threads stride over the token's rotation
// pairs (q heads, then k heads) and then over its v elements.
extern "C" __global__ void rope_qkv(const KV_T* __restrict__ qkv,
                                    const long long* __restrict__ positions,
                                    const float* __restrict__ cos_table,
                                    const float* __restrict__ sin_table,
                                    const long long* __restrict__ slots,
                                    KV_T* __restrict__ q_out, KV_T* __restrict__ k_cache,
                                    KV_T* __restrict__ v_cache, int n_tokens, int heads,
                                    int kv_heads, int head_dim)
{
    int t = blockIdx.x;
    if (t >= n_tokens) return;  // safe: no barrier below
    int half = head_dim / 2;
    long long row = (long long)t * (heads + 2 * kv_heads) * head_dim;
    long long slot = slots[t];
    const float* cos_row = cos_table + positions[t] * half;
    const float* sin_row = sin_table + positions[t] * half;
    int pairs = (heads + kv_heads) * half;
    for (int p = threadIdx.x; p < pairs; p += OPS_THREADS) {
        int head = p / half, i = p % half;
        bool is_q = head < heads;
        if (!is_q && slot < 0) continue;
        const KV_T* src = qkv + row + (long long)head * head_dim;
        float r1, r2;
        rotate_pair(to_float(src[i]), to_float(src[i + half]), round_elem(cos_row[i]),
                    round_elem(sin_row[i]), &r1, &r2);
        KV_T* dst = is_q ? q_out + ((long long)t * heads + head) * head_dim
                         : k_cache + (slot * kv_heads + head - heads) * head_dim;
        store_value(&dst[i], r1);
        store_value(&dst[i + half], r2);
    }
    if (slot < 0) return;
    int kv_size = kv_heads * head_dim;
    const KV_T* v = qkv + row + (long long)(heads + kv_heads) * head_dim;
    for (int e = threadIdx.x; e < kv_size; e += OPS_THREADS) v_cache[slot * kv_size + e] = v[e];
}

// out [n_tokens, inter] = silu(gate) * up of gate_up [n_tokens, 2 * inter] (gate | up), as the
// unfused gate / (1 + exp(-gate)) * up: four ops, each result rounded.
extern "C" __global__ void silu_mul(const KV_T* __restrict__ gate_up, KV_T* __restrict__ out,
                                    int n_tokens, int inter)
{
    long long idx = (long long)blockIdx.x * OPS_THREADS + threadIdx.x;
    if (idx >= (long long)n_tokens * inter) return;  // safe: no barrier
    long long t = idx / inter, j = idx % inter;
    float g = to_float(gate_up[t * 2 * inter + j]);
    float u = to_float(gate_up[t * 2 * inter + inter + j]);
    float e = round_elem(expf(-g));
    float s = round_elem(__fdiv_rn(g, round_elem(__fadd_rn(1.0f, e))));
    store_value(&out[idx], __fmul_rn(s, u));
}
