// The end of a tensor-core decode block (decode_tc.cu and decode_mma.cu): the warps' online-
// softmax states (m, l and O per row, in shared memory) merged into the block's, written as
// the output (a sequence of one partition) or as a partial state that the last block of the
// sequence to finish merges (split-K). Include after the kernel's layout header (HEAD_DIM,
// SLICES, ROW_TILES, TC_THREADS, NWARPS; LO for finish_block).
#ifndef DECODE_TC_MERGE_CUH
#define DECODE_TC_MERGE_CUH

// Where dim d of row r of the block's output goes (rows out_row + r of [.., QD]); KV_FUSE:
// nullptr for the dims of another fused head, which the row does not keep.
__device__ inline KV_T* out_at(KV_T* out, long long out_row, int r, int d, int nh)
{
    if (KV_FUSE == 1) return out + (out_row + r) * HEAD_DIM + d;
    if (d / QD != fused_part(r, nh)) return nullptr;
    return out + (out_row + r) * QD + d % QD;
}

// The merge of a split sequence's parts (rows h0 .. h0 + nh - 1 of sequence `out_row /
// num_heads`; part p of row r at slot slot0 + p * num_heads + r), by the whole block: the
// weights w[r][p] = l_p 2^(m_p - M_r) / sum_p (...) (nh x nparts floats of shared memory at
// w), then out = sum_p w_p O_p.
__device__ inline void merge_parts(float* w, KV_T* out, const float* part_out,
                                   const float* part_ml, long long out_row, long long slot0,
                                   int nparts, int num_heads, int nh)
{
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // the weights: one warp per row
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
        KV_T* o_out = out_at(out, out_row, r, d4 * 4, nh);   // (QD % 4 == 0: 4 dims of one head)
        if (!o_out) continue;
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
        store_value(o_out, acc.x);
        store_value(o_out + 1, acc.y);
        store_value(o_out + 2, acc.z);
        store_value(o_out + 3, acc.w);
    }
}

#ifndef MERGE_AFTER_LOOP   // the PTX kernels: a split sequence's last block merges it after
#define MERGE_AFTER_LOOP 0  // its tile loop, with merge_parts_together (tc_config's
#endif                      // merge_after_loop)
#if MERGE_AFTER_LOOP
// The merge with its loads in flight together, for a kernel that merges after its tile loop,
// where the loop's registers are free (inside the loop, even 16 more registers for loads in
// flight spilled the loop's: 53 us instead of 38 on D64 MQA 16/1, benchmarks/NOTES.md).
// Every thread loads the O of its first MERGE_ITEMS (row, 4 dims) items for up to MERGE_PARTS
// parts, and meanwhile the block loads every part's (m, l) into shared memory (nh x nparts
// float pairs at w); after one barrier the weights come from shared memory: one L2 round trip
// for a sequence of up to MERGE_PARTS parts whose items the block holds in one go, where
// merge_parts takes ~6 (a max pass and a sum pass per row, two rows per warp, then O).
#ifndef MERGE_ITEMS
#define MERGE_ITEMS 2
#endif
#ifndef MERGE_PARTS
#define MERGE_PARTS 8
#endif
__device__ inline void merge_parts_together(float* w, KV_T* out, const float* part_out,
                                            const float* part_ml, long long out_row,
                                            long long slot0, int nparts, int num_heads, int nh)
{
    constexpr int D4 = HEAD_DIM / 4;
    const int items = nh * D4;
    const float4* po = reinterpret_cast<const float4*>(part_out);
    float4 x[MERGE_ITEMS][MERGE_PARTS];
    auto load_o = [&](int base, int p0) {   // items base + TC_THREADS i, parts p0 + j
#pragma unroll
        for (int i = 0; i < MERGE_ITEMS; ++i) {
            const int idx = base + TC_THREADS * i;
#pragma unroll
            for (int j = 0; j < MERGE_PARTS; ++j) {
                if (idx < items && p0 + j < nparts)
                    x[i][j] = load_cg(po + (slot0 + idx / D4 + (long long)(p0 + j) * num_heads)
                                      * D4 + idx % D4);
            }
        }
    };
    load_o(threadIdx.x, 0);
    for (int rp = threadIdx.x; rp < nh * nparts; rp += TC_THREADS) {
        const float* ml = part_ml + (slot0 + rp / nparts + (long long)(rp % nparts) * num_heads) * 2;
        w[2 * rp] = load_cg(ml);
        w[2 * rp + 1] = load_cg(ml + 1);
    }
    __syncthreads();
    for (int base = threadIdx.x; base < items; base += MERGE_ITEMS * TC_THREADS) {
        if (base != threadIdx.x) load_o(base, 0);
        float mx[MERGE_ITEMS], l_sum[MERGE_ITEMS];
        float4 acc[MERGE_ITEMS];
#pragma unroll
        for (int i = 0; i < MERGE_ITEMS; ++i) {   // the row's largest m, from shared memory
            const int r = min(base + TC_THREADS * i, items - 1) / D4;
            mx[i] = NEG_BIG;
            for (int p = 0; p < nparts; ++p) mx[i] = fmaxf(mx[i], w[2 * (r * nparts + p)]);
            l_sum[i] = 0.0f;
            acc[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
        for (int p0 = 0; p0 < nparts; p0 += MERGE_PARTS) {
            if (p0) load_o(base, p0);
#pragma unroll
            for (int i = 0; i < MERGE_ITEMS; ++i) {
                const int r = min(base + TC_THREADS * i, items - 1) / D4;
#pragma unroll
                for (int j = 0; j < MERGE_PARTS; ++j) {
                    if (p0 + j < nparts) {
                        const float* mlp = w + 2 * (r * nparts + p0 + j);
                        const float c = mlp[1] * exp2f(mlp[0] - mx[i]);
                        l_sum[i] += c;
                        acc[i].x += c * x[i][j].x;
                        acc[i].y += c * x[i][j].y;
                        acc[i].z += c * x[i][j].z;
                        acc[i].w += c * x[i][j].w;
                    }
                }
            }
        }
#pragma unroll
        for (int i = 0; i < MERGE_ITEMS; ++i) {
            const int idx = base + TC_THREADS * i;
            KV_T* o_out = idx < items ? out_at(out, out_row, idx / D4, idx % D4 * 4, nh) : nullptr;
            if (o_out) {
                store_value(o_out, acc[i].x / l_sum[i]);
                store_value(o_out + 1, acc[i].y / l_sum[i]);
                store_value(o_out + 2, acc[i].z / l_sum[i]);
                store_value(o_out + 3, acc[i].w / l_sum[i]);
            }
        }
    }
}
// The kernels' side of the merge after the loop (flag_s[1]: the sequence left to merge, -1
// none; flag_s[2]: its parts). At the end of a block's last segment, after finish_rows with
// defer_merge: remember the sequence if this block is the one to merge it (flag_s[0]).
__device__ inline void defer_merge_of(int* flag_s, bool last_segment, int b, int nparts)
{
    if (threadIdx.x == 0 && last_segment && nparts > 1 && flag_s[0]) {
        flag_s[1] = b;
        flag_s[2] = nparts;
    }
}
// After the tile loop (and the segment's barrier): the remembered merge, if any, with every
// stage buffer free for its weights (rows h0 .. h0 + nh - 1 of the sequence).
__device__ inline void merge_deferred(const int* flag_s, unsigned char* smem, KV_T* out,
                                      const float* part_out, const float* part_ml,
                                      const int* slot_start, int num_heads, int h0, int nh)
{
    const int pend_b = flag_s[1], pend_parts = flag_s[2];
    if (pend_b >= 0) {   // (block-uniform)
        copy_wait<0>();
        __threadfence();
        merge_parts_together(reinterpret_cast<float*>(smem), out, part_out, part_ml,
                             (long long)pend_b * num_heads + h0,
                             (long long)slot_start[pend_b] * num_heads + h0, pend_parts,
                             num_heads, nh);
    }
}
#endif

// m_s, l_s: [warps][16] (warp w's m and l of row r of its row tile at w * 16 + r); os: the
// warps' O, row r of warp w at os + w * O_WSTRIDE + r * O_LD (floats; column d at d ^
// o_swz(r, d) with O_SWZ), reused as the merge's
// weights (nh x nparts floats from os); flag_s: one int. decode_mma.cu calls it at the end of
// every segment of its range (O in the stage buffer just computed), decode_tc.cu through
// finish_block at its block's end.
template <int O_LD, int O_WSTRIDE, bool O_SWZ = false>
__device__ inline void finish_rows(const float* m_s, const float* l_s, float* os, int* flag_s,
                                   KV_T* out, float* part_out, float* part_ml, int* counters,
                                   const int* slot_start, int b, int part, int nparts,
                                   int num_heads, int h0, int nh, float v_mult,
                                   bool defer_merge = false)
{
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
            acc += os[w * O_WSTRIDE + rr * O_LD + (O_SWZ ? d ^ o_swz(rr, d) : d)] * c;
        }
        if (single) {
            KV_T* o = out_at(out, out_row, r, d, nh);
            if (o) store_value(o, acc / l * v_mult);
        } else {
            const long long slot = slot0 + (long long)part * num_heads + r;
            part_out[slot * HEAD_DIM + d] = acc / l * v_mult;
            if (d == 0) {
                part_ml[slot * 2] = mx;
                part_ml[slot * 2 + 1] = l;
            }
        }
    }
    if (single || SEPARATE_MERGE) return;   // (SEPARATE_MERGE: a second launch merges)

    // The last block of this (sequence, row chunk) to finish merges the partitions.
    __threadfence();   // this block's partial state is visible to the whole GPU...
    __syncthreads();
    if (threadIdx.x == 0) {
        int* counter = counters + (long long)b * grid_rows() + block_rows();
        const int done = atomicAdd(counter, 1);   // ...before it is counted
        flag_s[0] = done == nparts - 1;
        if (flag_s[0]) *counter = 0;   // ready for the next launch
    }
    __syncthreads();
    if (!flag_s[0] || defer_merge) return;   // (defer_merge: the caller merges if flag_s[0])
    __threadfence();

    merge_parts(os, out, part_out, part_ml, out_row, slot0, nparts, num_heads, nh);
}

// decode_tc.cu's end of block: the warps' O as [warps][16][LO] at os
__device__ inline void finish_block(const float* m_s, const float* l_s, float* os, int* flag_s,
                                    KV_T* out, float* part_out, float* part_ml, int* counters,
                                    const int* slot_start, int b, int part, int nparts,
                                    int num_heads, int h0, int nh, float v_mult)
{
    finish_rows<LO, 16 * LO>(m_s, l_s, os, flag_s, out, part_out, part_ml, counters, slot_start,
                             b, part, nparts, num_heads, h0, nh, v_mult);
}

#endif  // DECODE_TC_MERGE_CUH
