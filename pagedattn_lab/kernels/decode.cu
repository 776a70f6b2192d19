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
//
// Compressed pages (kv_quant.cuh, pagedattn_lab/quant.py): one byte per element, value =
// code * scale. A 16-byte load then brings 16 codes, so a token's row takes half the threads
// and half the bytes of fp16. The scales are applied where they cost least:
//   static scales (k_scale, v_scale [num_kv_heads]): K's folds into q's pre-scaling (one
//     multiply per block), V's into the final 1 / l;
//   per-token scales ([num_pages, page_size, num_kv_heads], index slot * num_kv_heads +
//     kv_head, slot = page * page_size + offset): each score is multiplied by its token's K
//     scale, and each softmax weight p by its token's V scale as it weighs V (l sums the p
//     alone: the V scale belongs to the value, not to the weight).

#include "common.cuh"
#include "kv_quant.cuh"

#include "decode_params.cuh"

#include "decode_chunks.cuh"
#include "decode_io.cuh"
#if HALF2_MATH
#include "decode_half2.cuh"
#include "decode_half2_step.cuh"
#endif

// ---- the partition kernel ----------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(DECODE_THREADS, DECODE_MIN_BLOCKS) paged_decode(
    const KV_T* __restrict__ q,            // [batch, num_heads, HEAD_DIM]
    const CACHE_T* __restrict__ k_cache,   // [num_pages, page_size, num_kv_heads, HEAD_DIM]
    const CACHE_T* __restrict__ v_cache,
    const float* __restrict__ k_scale,     // compressed pages: see the top; else 1 unused float
    const float* __restrict__ v_scale,
    const int* __restrict__ block_tables,  // [batch, max_pages]
    const int* __restrict__ seq_lens,      // [batch] (WORK_LIST: after the work list)
    KV_T* __restrict__ out,                // [batch, num_heads, HEAD_DIM]  (max_parts == 1)
    float* __restrict__ part_out,          // [batch, num_heads, max_parts, HEAD_DIM]
    float* __restrict__ part_ml,           // [batch, num_heads, max_parts, 2]  (max, sum)
    int num_heads, int num_kv_heads, int page_size, int page_shift, int max_pages,
    int part_len, int max_parts, float scale_log2)
{
    constexpr int U = DECODE_STEP_TOKENS;   // loads in flight
    constexpr bool PREFETCH = GMAX >= DECODE_PREFETCH_GROUP;
    extern __shared__ float smem[];

    // -DWORK_LIST: grid = (items, num_kv_heads * head_chunks, 1), item x = the partition work[x]
    // of a list the plan sorts longest first, so that the short partitions, the sequences'
    // last ones, run at the end and fill the gaps of the last wave. The list [items, 2] of
    // (sequence, partition) comes in front of the lengths in seq_lens' buffer (the kernel's
    // arguments stay the same).
#if WORK_LIST
    const int b = seq_lens[2 * blockIdx.x];
    const int part = seq_lens[2 * blockIdx.x + 1];
    seq_lens += 2 * gridDim.x;
#else
    const int b = blockIdx.z;
    const int part = blockIdx.x;
#endif
    const int group = num_heads / num_kv_heads;       // query heads per KV head
    const int chunks = (group + GMAX - 1) / GMAX;     // blocks per KV head when group > GMAX
    const int kvh = blockIdx.y / chunks;
    const int h0 = kvh * group + (blockIdx.y % chunks) * GMAX;  // first query head here
    const int nh = min(GMAX, kvh * group + group - h0);         // query heads here

    const int seq_len = seq_lens[b];
    const int start = part * part_len;
    if (start >= seq_len) return;  // the whole block leaves together, before any barrier
    const int end = min(seq_len, start + part_len);

    const int gl = threadIdx.x % TG;        // this thread's lane in its token's group
    const int grp = threadIdx.x / TG;       // this thread's group
    const int ngroups = blockDim.x / TG;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;

    const int* table = block_tables + (long long)b * max_pages;
    // Offsets inside one page fit in 32 bits (a page of one layer holds far fewer than 2^31
    // elements); the page's own offset is 64-bit (page * page_stride, widened in load_step).
    const int row_stride = num_kv_heads * HEAD_DIM;   // one token
    const int page_stride = page_size * row_stride;  // one page
    const int head_off = kvh * HEAD_DIM + gl * VEC;
    const int step = ngroups * U;
    chunk_t kraw[U][CPT], vraw[U][CPT];
    float ks[U], vs[U];   // per-token scales of the step's tokens (unused otherwise)
    // The first step's loads go out before q is prepared: their latency and q's overlap.
    if (PREFETCH)
        load_step<U>(k_cache, v_cache, k_scale, v_scale, table, start, end, ngroups, grp, gl,
                     page_size, page_shift, page_stride, row_stride, head_off, num_kv_heads,
                     kvh, kraw, vraw, ks, vs);

    // Scale folding (see the top): q_mult pre-scales q, v_mult multiplies the output.
#if KV_QUANT && !PER_TOKEN_SCALES
    const float q_mult = scale_log2 * k_scale[kvh] * CODE_UNIT;
    const float v_mult = v_scale[kvh] * CODE_UNIT;
#else
    const float q_mult = scale_log2 * CODE_UNIT;
    const float v_mult = CODE_UNIT;
#endif

    // This thread's slices of each query head, pre-scaled into base-2 logits (0 past the row).
    float qr[GMAX][CPT][VEC];
    load_q(q, (long long)b * num_heads + h0, nh, gl, q_mult, qr);
#if HALF2_MATH
    __half2 qh[GMAX][CPT][HV];
    float q_unit[GMAX];
    q_to_half2(qr, qh, q_unit);
#endif

#if HALF2_MATH
    float q_unit_own[HPL], m_own[HPL], l_own[HPL];
    const int hb = head_base(gl);
#pragma unroll
    for (int j = 0; j < HPL; ++j) {
        q_unit_own[j] = q_unit[0];
#pragma unroll
        for (int g = 1; g < GMAX; ++g)   // q_unit[hb + j] without a dynamic index
            if (g == hb + j) q_unit_own[j] = q_unit[g];
        m_own[j] = NEG_BIG;
        l_own[j] = 0.0f;
    }
    __half2 acc_h[GMAX][CPT][HV];   // PV_HALF2: the fp16 sums of V since the last flush
#pragma unroll
    for (int g = 0; g < GMAX; ++g)
#pragma unroll
        for (int c = 0; c < CPT; ++c)
#pragma unroll
            for (int i = 0; i < HV; ++i) acc_h[g][c][i] = __float2half2_rn(0.0f);
    int flush_in = 1;   // steps until the next flush, counting this one
#if ACC_SMEM
    __shared__ float4 acc_smem[ACC4 * DECODE_THREADS];
    float4* acc_s = acc_smem + threadIdx.x;
#pragma unroll
    for (int k = 0; k < ACC4; ++k) acc_s[k * DECODE_THREADS] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#else
    float4* acc_s = nullptr;
#endif
#endif
    float m[GMAX], l[GMAX], acc[GMAX][CPT][VEC];
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
        m[g] = NEG_BIG;
        l[g] = 0.0f;
#pragma unroll
        for (int c = 0; c < CPT; ++c)
#pragma unroll
            for (int i = 0; i < VEC; ++i) acc[g][c][i] = 0.0f;
    }

    // Block-uniform loop: every thread runs the same number of steps (shuffles need all).
    // Each step loads U tokens per group (2*U*CPT independent 16-byte loads per thread);
    // with PREFETCH the next step's loads are issued before this step's arithmetic.
    for (int base = start; base < end; base += step) {
        if (!PREFETCH)
            load_step<U>(k_cache, v_cache, k_scale, v_scale, table, base, end, ngroups, grp, gl,
                         page_size, page_shift, page_stride, row_stride, head_off, num_kv_heads,
                         kvh, kraw, vraw, ks, vs);
        float k_mult[U], p_mult[U];   // per-token scales: of each score, of each weight
        bool valid[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            valid[u] = base + u * ngroups + grp < end;   // neighbouring groups: neighbouring tokens
#if PER_TOKEN_SCALES
            k_mult[u] = ks[u];
            p_mult[u] = vs[u];
#else
            k_mult[u] = p_mult[u] = 1.0f;
#endif
        }
#if HALF2_MATH
        chunk_t kcur[U][CPT], vcur[U][CPT];
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int c = 0; c < CPT; ++c) kcur[u][c] = kraw[u][c], vcur[u][c] = vraw[u][c];
#else
        float kf[U][CPT][VEC], vf[U][CPT][VEC];
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int c = 0; c < CPT; ++c) {
                unpack_cache(kraw[u][c], kf[u][c]);
                unpack_cache(vraw[u][c], vf[u][c]);
            }
#endif
        if (PREFETCH && base + step < end)   // block-uniform
            load_step<U>(k_cache, v_cache, k_scale, v_scale, table, base + step, end, ngroups,
                         grp, gl, page_size, page_shift, page_stride, row_stride, head_off,
                         num_kv_heads, kvh, kraw, vraw, ks, vs);
#if HALF2_MATH
        flush_in = flush_in == 1 ? PV_FLUSH : flush_in - 1;   // block-uniform
        float dot[GMAX][U];
        half2_dots<U>(kcur, qh, gl, dot);
        half2_softmax_pv<U>(dot, vcur, k_mult, p_mult, valid, q_unit_own, m_own, l_own, acc,
                            acc_s, acc_h, flush_in == 1, lane);
#else
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
            float s[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float dot = 0.0f;
#pragma unroll
                for (int c = 0; c < CPT; ++c)
#pragma unroll
                    for (int i = 0; i < VEC; ++i) dot += qr[g][c][i] * kf[u][c][i];
#pragma unroll
                for (int off = TG >> 1; off > 0; off >>= 1)   // sum over the group
                    dot += __shfl_xor_sync(0xffffffffu, dot, off);
                s[u] = valid[u] ? dot * k_mult[u] : NEG_INF;
            }
            float m_new = m[g];
#pragma unroll
            for (int u = 0; u < U; ++u) m_new = fmaxf(m_new, s[u]);
            float alpha = exp2f(m[g] - m_new);   // rescales what was summed so far
            m[g] = m_new;
            l[g] *= alpha;
#pragma unroll
            for (int c = 0; c < CPT; ++c)
#pragma unroll
                for (int i = 0; i < VEC; ++i) acc[g][c][i] *= alpha;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float p = exp2f(s[u] - m_new);   // 0 for a masked token
                l[g] += p;
                const float pv = p * p_mult[u];
#pragma unroll
                for (int c = 0; c < CPT; ++c)
#pragma unroll
                    for (int i = 0; i < VEC; ++i) acc[g][c][i] += pv * vf[u][c][i];
            }
        }
#endif
    }
#if HALF2_MATH
#if PV_HALF2
    flush_half2(acc, acc_s, acc_h);
#endif
    // Every lane of a token's group takes its heads' maxima and sums from their owners, so
    // that the merges below see the state of the fp32 path.
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
        m[g] = from_owner(m_own, g, lane);
        l[g] = from_owner(l_own, g, lane);
    }
#endif
#if ACC_SMEM
    // The groups' sums are in shared memory already: merge them there (decode_half2.cuh).
    __shared__ float s_ml[DECODE_THREADS / TG][GMAX][2];   // each group's max and sum
    merge_groups_smem(m, l, acc_smem, s_ml, out, part_out, part_ml,
                      (long long)b * num_heads + h0, nh, gl, grp, ngroups, part, max_parts,
                      v_mult);
#else

    // Merge the groups of each warp (butterfly: every lane ends with the warp's result).
#pragma unroll
    for (int off = TG; off < 32; off <<= 1) {
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
            float m_o = __shfl_xor_sync(0xffffffffu, m[g], off);
            float l_o = __shfl_xor_sync(0xffffffffu, l[g], off);
            float m_new = fmaxf(m[g], m_o);
            float a = exp2f(m[g] - m_new), c_o = exp2f(m_o - m_new);
            l[g] = l[g] * a + l_o * c_o;
            m[g] = m_new;
#pragma unroll
            for (int c = 0; c < CPT; ++c)
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    float acc_o = __shfl_xor_sync(0xffffffffu, acc[g][c][i], off);
                    acc[g][c][i] = acc[g][c][i] * a + acc_o * c_o;
                }
        }
    }

    // Merge the warps in shared memory: [nwarps][GMAX] maxima, sums, [nwarps][GMAX][HEAD_DIM].
    float* s_m = smem;
    float* s_l = s_m + nwarps * GMAX;
    float* s_acc = s_l + nwarps * GMAX;
    if (lane < TG) {   // the warp's first group holds the merged values
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
            if (lane == 0) {
                s_m[warp * GMAX + g] = m[g];
                s_l[warp * GMAX + g] = l[g];
            }
#pragma unroll
            for (int c = 0; c < CPT; ++c) {
                const int chunk = gl + c * TG;
                if (chunk < CHUNKS)
#pragma unroll
                    for (int i = 0; i < VEC; ++i)
                        s_acc[(warp * GMAX + g) * HEAD_DIM + chunk * VEC + i] = acc[g][c][i];
            }
        }
    }
    __syncthreads();

    for (int idx = threadIdx.x; idx < nh * HEAD_DIM; idx += blockDim.x) {
        int g = idx / HEAD_DIM, d = idx % HEAD_DIM;
        float m_all = NEG_BIG;
        for (int w = 0; w < nwarps; ++w) m_all = fmaxf(m_all, s_m[w * GMAX + g]);
        float l_all = 0.0f, o = 0.0f;
        for (int w = 0; w < nwarps; ++w) {
            float c = exp2f(s_m[w * GMAX + g] - m_all);
            l_all += s_l[w * GMAX + g] * c;
            o += s_acc[(w * GMAX + g) * HEAD_DIM + d] * c;
        }
        store_result(out, part_out, part_ml, (long long)b * num_heads + h0 + g, d,
                     o / l_all * v_mult, m_all, l_all, part, max_parts);
    }
#endif  // ACC_SMEM
}

// ---- the merge kernel --------------------------------------------------------------------
// Thread-to-data mapping: grid = (num_heads, batch); one block per (sequence, query head);
// thread d (striding by blockDim) combines dimension d of the sequence's partitions:
//   out = sum_p w_p * o_p / sum_p w_p,   w_p = l_p * 2^(m_p - max_p m_p)
// (each o_p is already normalized by its own l_p, so w_p weighs it by its share).

extern "C" __global__ void paged_decode_merge(
    const float* __restrict__ part_out, const float* __restrict__ part_ml,
    const int* __restrict__ seq_lens, KV_T* __restrict__ out, int num_heads, int part_len,
    int max_parts)
{
    const int h = blockIdx.x, b = blockIdx.y;
    const int nparts = (seq_lens[b] + part_len - 1) / part_len;
    const long long row = (long long)b * num_heads + h;
    const float* ml = part_ml + row * max_parts * 2;
    float m_all = NEG_BIG;
    for (int p = 0; p < nparts; ++p) m_all = fmaxf(m_all, ml[2 * p]);
    for (int d = threadIdx.x; d < HEAD_DIM; d += blockDim.x) {
        float l_all = 0.0f, o = 0.0f;
        for (int p = 0; p < nparts; ++p) {
            float w = ml[2 * p + 1] * exp2f(ml[2 * p] - m_all);
            l_all += w;
            o += w * part_out[(row * max_parts + p) * HEAD_DIM + d];
        }
        store_value(out + row * HEAD_DIM + d, o / l_all);
    }
}
