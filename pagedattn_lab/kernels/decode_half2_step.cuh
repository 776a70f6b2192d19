// paged_decode (decode.cu) over compressed pages with packed fp16 arithmetic (HALF2_MATH): the
// step of the main loop (its q.k, then its softmax and p*v), the fp32 sums of V (in shared
// memory with ACC_SMEM) and the block's merge of its groups from there. decode_half2.cuh says
// why and at what cost in accuracy. Include after decode_half2.cuh.
#ifndef DECODE_HALF2_STEP_CUH
#define DECODE_HALF2_STEP_CUH

// ACC_SMEM: the fp32 sums of V live in shared memory while the fp16 ones take the registers
// (4 heads: 64 floats per thread fewer, ~130 registers, 4 blocks per SM instead of 2). Each
// thread owns a column: its float4 number k at acc_s[k * DECODE_THREADS] (neighbouring threads,
// neighbouring 16 bytes: no bank conflicts).
constexpr int ACC4 = GMAX * CPT * VEC / 4;   // float4s of sums per thread
static_assert(!ACC_SMEM || (ACC4 * DECODE_THREADS * 16
                            + DECODE_THREADS / 32 * GMAX * (2 + HEAD_DIM) * 4 <= 48 * 1024),
              "ACC_SMEM: the sums and the merge's shared memory exceed 48 KB");

// ACC_SMEM, after the loop: the block's output straight from the groups' sums in shared
// memory (no shuffles of the sums between a warp's groups, no copy to a second buffer). Every
// group's maximum and sum per head (m, l: each lane holds its group's) go to shared memory;
// then a thread takes 4 dimensions of one head and adds up the groups' float4s of them, each
// weighed by 2^(m_group - m_all) (the weights of the butterfly merge, in one pass).
// s_ml: shared memory for [DECODE_THREADS / TG][GMAX][2] floats.
__device__ inline void merge_groups_smem(const float (&m)[GMAX], const float (&l)[GMAX],
                                         const float4* acc_smem, float (*s_ml)[GMAX][2],
                                         KV_T* out, float* part_out, float* part_ml,
                                         long long row0, int nh, int gl, int grp, int ngroups,
                                         int part, int max_parts, float v_mult)
{
    if (gl == 0)
#pragma unroll
        for (int g = 0; g < GMAX; ++g) s_ml[grp][g][0] = m[g], s_ml[grp][g][1] = l[g];
    __syncthreads();   // also orders every thread's last flush before the reads below
    for (int idx = threadIdx.x; idx < nh * HEAD_DIM / 4; idx += blockDim.x) {
        const int g = idx / (HEAD_DIM / 4), d = idx % (HEAD_DIM / 4) * 4;
        const int chunk = d / VEC, i = d % VEC;
        // chunk = lane + c * TG of a group; its float4 (g, c, i) in that lane's column
        const float4* col = acc_smem + (chunk % TG)
                            + ((g * CPT + chunk / TG) * VEC + i) / 4 * DECODE_THREADS;
        float m_all = NEG_BIG;
        for (int w = 0; w < ngroups; ++w) m_all = fmaxf(m_all, s_ml[w][g][0]);
        float l_all = 0.0f;
        float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int w = 0; w < ngroups; ++w) {
            const float c = exp2f(s_ml[w][g][0] - m_all);
            const float4 x = col[w * TG];
            l_all += s_ml[w][g][1] * c;
            o.x += x.x * c, o.y += x.y * c, o.z += x.z * c, o.w += x.w * c;
        }
        const float f = v_mult / l_all;
        store_result(out, part_out, part_ml, row0 + g, d, o.x * f, m_all, l_all, part,
                     max_parts);
        store_result(out, part_out, part_ml, row0 + g, d + 1, o.y * f, m_all, l_all, part,
                     max_parts);
        store_result(out, part_out, part_ml, row0 + g, d + 2, o.z * f, m_all, l_all, part,
                     max_parts);
        store_result(out, part_out, part_ml, row0 + g, d + 3, o.w * f, m_all, l_all, part,
                     max_parts);
    }
}

// The fp32 sums of head g times a (a rescale).
__device__ inline void scale_sums(float (&acc)[GMAX][CPT][VEC], float4* acc_s, int g, float a)
{
#if ACC_SMEM
#pragma unroll
    for (int k = 0; k < CPT * VEC / 4; ++k) {
        float4 x = acc_s[(g * CPT * VEC / 4 + k) * DECODE_THREADS];
        x.x *= a, x.y *= a, x.z *= a, x.w *= a;
        acc_s[(g * CPT * VEC / 4 + k) * DECODE_THREADS] = x;
    }
#else
#pragma unroll
    for (int c = 0; c < CPT; ++c)
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[g][c][i] *= a;
#endif
}

// The fp16 sums of V added to the fp32 ones, and cleared.
__device__ inline void flush_half2(float (&acc)[GMAX][CPT][VEC], float4* acc_s,
                                   __half2 (&acc_h)[GMAX][CPT][HV])
{
#pragma unroll
    for (int g = 0; g < GMAX; ++g)
#pragma unroll
        for (int c = 0; c < CPT; ++c)
#pragma unroll
            for (int i = 0; i < HV; i += 2) {   // VEC is a multiple of 4 for codes
#if ACC_SMEM
                float4& x = acc_s[((g * CPT + c) * VEC / 4 + i / 2) * DECODE_THREADS];
                float4 y = x;
                y.x += __low2float(acc_h[g][c][i]);
                y.y += __high2float(acc_h[g][c][i]);
                y.z += __low2float(acc_h[g][c][i + 1]);
                y.w += __high2float(acc_h[g][c][i + 1]);
                x = y;
#else
                acc[g][c][2 * i] += __low2float(acc_h[g][c][i]);
                acc[g][c][2 * i + 1] += __high2float(acc_h[g][c][i]);
                acc[g][c][2 * i + 2] += __low2float(acc_h[g][c][i + 1]);
                acc[g][c][2 * i + 3] += __high2float(acc_h[g][c][i + 1]);
#endif
                acc_h[g][c][i] = acc_h[g][c][i + 1] = __float2half2_rn(0.0f);
            }
}

// One step of U tokens per thread group (see the top), in two halves. The first: q.k of the
// U tokens summed over the token's lanes; dot[0 .. HPL) are this lane's heads'
// (head_base(gl) + j) scores, unscaled.
template <int U>
__device__ inline void half2_dots(const chunk_t (&kraw)[U][CPT],
                                  const __half2 (&qh)[GMAX][CPT][HV], int gl,
                                  float (&dot)[GMAX][U])
{
    // q.k: the halves of each lane's fp16 dot, then the token's lanes (reduce_scatter).
#if DOT_PACK
    constexpr int UP = (U + 1) / 2;
    __half2 dp[GMAX][UP];   // tokens 2w and 2w + 1 in the halves
#endif
#pragma unroll
    for (int u = 0; u < U; ++u) {
        __half2 kh[CPT][HV];
#pragma unroll
        for (int c = 0; c < CPT; ++c) codes_half2(kraw[u][c], kh[c]);
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
            __half2 a = __float2half2_rn(0.0f);
#pragma unroll
            for (int c = 0; c < CPT; ++c)
#pragma unroll
                for (int i = 0; i < HV; ++i) a = __hfma2(qh[g][c][i], kh[c][i], a);
#if DOT_PACK
            // (a.x, b.x) + (a.y, b.y): token 2w's dot in the low half, 2w + 1's in the high
            // (an odd U's last token: b = 0); dp holds token 2w's a until 2w + 1's comes
            const __half2 b = u % 2 ? a : __float2half2_rn(0.0f);
            const __half2 first = u % 2 ? dp[g][u / 2] : a;
            dp[g][u / 2] = u % 2 || u == U - 1
                               ? __hadd2(__lows2half2(first, b), __highs2half2(first, b)) : a;
#else
            dot[g][u] = __low2float(a) + __high2float(a);
#endif
        }
    }
#if DOT_PACK
    reduce_scatter<UP>(dp, gl);
#pragma unroll
    for (int j = 0; j < HPL; ++j)
#pragma unroll
        for (int u = 0; u < U; ++u)
            dot[j][u] = u % 2 ? __high2float(dp[j][u / 2]) : __low2float(dp[j][u / 2]);
#else
    reduce_scatter<U>(dot, gl);
#endif
}

// The owners' online softmax of the scores, the rescale when some maximum moved, and the
// weighted V rows added to the sums (flushed to acc when `flush`).
template <int U>
__device__ inline void half2_softmax_pv(const float (&dot)[GMAX][U],
                                        const chunk_t (&vraw)[U][CPT],
                                        const float (&k_mult)[U], const float (&p_mult)[U],
                                        const bool (&valid)[U], const float (&q_unit_own)[HPL],
                                        float (&m_own)[HPL], float (&l_own)[HPL],
                                        float (&acc)[GMAX][CPT][VEC], float4* acc_s,
                                        __half2 (&acc_h)[GMAX][CPT][HV], bool flush, int lane)
{
    // The owners' online softmax: p of each token, and whether a maximum moved.
    float p[HPL][U], alpha[HPL];
    bool moved = false;
#pragma unroll
    for (int j = 0; j < HPL; ++j) {
        float s[U], mx = m_own[j];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            s[u] = valid[u] ? dot[j][u] * q_unit_own[j] * k_mult[u] : NEG_INF;
            mx = fmaxf(mx, s[u]);
        }
        const float m_new = mx > m_own[j] + (float)SLACK ? mx : m_own[j];
        alpha[j] = exp2f(m_own[j] - m_new);   // 0 at the first token (m was NEG_BIG, acc 0)
        moved |= m_new != m_own[j] && m_own[j] != NEG_BIG;
        m_own[j] = m_new;
        l_own[j] *= alpha[j];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            p[j][u] = exp2f(s[u] - (m_new + (float)PV_SHIFT));   // 0 for a masked token
            l_own[j] += p[j][u];
            p[j][u] *= p_mult[u];   // the V scale weighs the value, not the weight (l)
        }
    }
    if (__any_sync(0xffffffffu, moved)) {   // warp-uniform: the rescale is rare
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
            const float a = from_owner(alpha, g, lane);
            scale_sums(acc, acc_s, g, a);
#if PV_HALF2
#pragma unroll
            for (int c = 0; c < CPT; ++c)
#pragma unroll
                for (int i = 0; i < HV; ++i)
                    acc_h[g][c][i] = __hmul2(acc_h[g][c][i], __float2half2_rn(a));
#endif
        }
    }

#if PV_HALF2
    // Weights as fp16 pairs (two tokens per shuffle), V summed in fp16 over PV_FLUSH steps.
    constexpr int U2 = (U + 1) / 2;
    unsigned pb[HPL][U2];
#pragma unroll
    for (int j = 0; j < HPL; ++j)
#pragma unroll
        for (int w = 0; w < U2; ++w)
            pb[j][w] = half2_bits(__floats2half2_rn(p[j][2 * w],
                                                    2 * w + 1 < U ? p[j][2 * w + 1] : 0.0f));
    __half2 vh[U][CPT][HV];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
        for (int c = 0; c < CPT; ++c) codes_half2(vraw[u][c], vh[u][c]);
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
#pragma unroll
        for (int w = 0; w < U2; ++w) {
            unsigned send[HPL];
#pragma unroll
            for (int j = 0; j < HPL; ++j) send[j] = pb[j][w];
            const __half2 pp = bits_half2(from_owner_bits(send, g, lane));
#pragma unroll
            for (int t = 0; t < 2 && 2 * w + t < U; ++t) {
                const __half2 pu = __half2half2(t ? __high2half(pp) : __low2half(pp));
#pragma unroll
                for (int c = 0; c < CPT; ++c)
#pragma unroll
                    for (int i = 0; i < HV; ++i)
                        acc_h[g][c][i] = __hfma2(pu, vh[2 * w + t][c][i], acc_h[g][c][i]);
            }
        }
    }
    if (flush) flush_half2(acc, acc_s, acc_h);
#else
#pragma unroll
    for (int u = 0; u < U; ++u) {
        float vf[CPT][VEC];
#pragma unroll
        for (int c = 0; c < CPT; ++c) {
            __half2 vh[HV];
            codes_half2(vraw[u][c], vh);
#pragma unroll
            for (int i = 0; i < HV; ++i) {
                vf[c][2 * i] = __low2float(vh[i]);
                vf[c][2 * i + 1] = __high2float(vh[i]);
            }
        }
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
            float send[HPL];
#pragma unroll
            for (int j = 0; j < HPL; ++j) send[j] = p[j][u];
            const float pv = from_owner(send, g, lane);
#pragma unroll
            for (int c = 0; c < CPT; ++c)
#pragma unroll
                for (int i = 0; i < VEC; ++i) acc[g][c][i] += pv * vf[c][i];
        }
    }
#endif
}

#endif  // DECODE_HALF2_STEP_CUH
