// paged_decode's (decode.cu) memory traffic: the K/V chunks of a step's tokens (their
// offsets through the block table, the loads, per-token scales), q's slices, and an output
// element's store. Include after decode_chunks.cuh.
#ifndef DECODE_IO_CUH
#define DECODE_IO_CUH

// A chunk of the cache. CODE_L2_256 (codes, sm_80+): with a hint that L2 fetch the 256-byte
// block around it (a KV head's row of codes is 128 bytes, its neighbour head's row the other
// half, read by the neighbour block at about the same time).
#ifndef CODE_L2_256
#define CODE_L2_256 0
#endif
__device__ inline chunk_t load_chunk(const CACHE_T* p)
{
#if CODE_L2_256 && KV_QUANT && CHUNK_BYTES == 16 && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    chunk_t r;
    asm("ld.global.nc.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
#else
    return *reinterpret_cast<const chunk_t*>(p);
#endif
}

// Token u of this thread's group in the step from `base` (a token past the end is replaced by
// the last one, so every load is valid; it is masked later).
__device__ inline int step_token(int base, int u, int ngroups, int grp, int end)
{
    return min(base + u * ngroups + grp, end - 1);
}

// Where token t is: e, the offset of this thread's first chunk in a cache, and si, the index
// of its per-token scales.
__device__ inline void token_offsets(const int* table, int t, int page_size, int page_shift,
                                     int page_stride, int row_stride, int head_off,
                                     int num_kv_heads, int kvh, long long& e, long long& si)
{
    int vpage = page_shift >= 0 ? (t >> page_shift) : (t / page_size);
    int offset = t - vpage * page_size;
    long long page = table[vpage];      // widen before multiplying by the strides
    e = page * page_stride + (offset * row_stride + head_off);
    si = (page * page_size + offset) * num_kv_heads + kvh;
}

// Issue the loads of one token's row of one cache (K or V) at offset e (and its scale).
__device__ inline void load_row(const CACHE_T* cache, const float* scale, long long e,
                                long long si, int gl, chunk_t (&raw)[CPT], float& sc)
{
#if PER_TOKEN_SCALES
    sc = scale[si];
#endif
#pragma unroll
    for (int c = 0; c < CPT; ++c)
        raw[c] = gl + c * TG < CHUNKS ? load_chunk(cache + e + c * TG * VEC) : zero_chunk();
}

// Issue the loads of one cache (K or V) at those offsets. Chunk c of this thread is chunk
// gl + c * TG of the row (neighbouring lanes, neighbouring bytes); a chunk past the row's end
// is not loaded. With per-token scales it also loads each token's scale.
// Issue the K and V loads of one step (and with per-token scales each token's K and V scale).
template <int U>
__device__ inline void load_step(const CACHE_T* k_cache, const CACHE_T* v_cache,
                                 const float* k_scale, const float* v_scale, const int* table,
                                 int base, int end, int ngroups, int grp, int gl, int page_size,
                                 int page_shift, int page_stride, int row_stride,
                                 int head_off, int num_kv_heads, int kvh,
                                 chunk_t (&kraw)[U][CPT], chunk_t (&vraw)[U][CPT], float (&ks)[U],
                                 float (&vs)[U])
{
#pragma unroll
    for (int u = 0; u < U; ++u) {
        long long e, si;
        token_offsets(table, step_token(base, u, ngroups, grp, end), page_size, page_shift,
                      page_stride, row_stride, head_off, num_kv_heads, kvh, e, si);
        load_row(k_cache, k_scale, e, si, gl, kraw[u], ks[u]);
        load_row(v_cache, v_scale, e, si, gl, vraw[u], vs[u]);
    }
}

// One output element of row `row` (batch * num_heads + head), dimension d: the final value, or
// with several partitions this partition's normalized value and (once per row) its max and sum.
__device__ inline void store_result(KV_T* out, float* part_out, float* part_ml, long long row,
                                    int d, float result, float m_all, float l_all, int part,
                                    int max_parts)
{
    if (max_parts == 1) {
        store_value(out + row * HEAD_DIM + d, result);
    } else {
        long long slot = row * max_parts + part;
        part_out[slot * HEAD_DIM + d] = result;
        if (d == 0) {
            part_ml[slot * 2] = m_all;
            part_ml[slot * 2 + 1] = l_all;
        }
    }
}

// This thread's slices of query heads row0 .. row0 + nh (rows of q), pre-scaled by q_mult
// into base-2 logits (0 past the row or past the block's heads).
__device__ inline void load_q(const KV_T* q, long long row0, int nh, int gl, float q_mult,
                              float (&qr)[GMAX][CPT][VEC])
{
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
#pragma unroll
        for (int c = 0; c < CPT; ++c) {
            const int chunk = gl + c * TG;
#pragma unroll
            for (int r = 0; r < VEC / QVEC; ++r) {   // a chunk of codes: several q loads
                uint4 raw = make_uint4(0u, 0u, 0u, 0u);
                if (g < nh && chunk < CHUNKS)
                    raw = *reinterpret_cast<const uint4*>(
                        q + (row0 + g) * HEAD_DIM + chunk * VEC + r * QVEC);
                unpack_chunk<KV_T>(raw, qr[g][c] + r * QVEC);
            }
#pragma unroll
            for (int i = 0; i < VEC; ++i) qr[g][c][i] *= q_mult;
        }
    }
}

#endif  // DECODE_IO_CUH
