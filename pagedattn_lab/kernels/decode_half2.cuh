// paged_decode (decode.cu) over compressed pages with packed fp16 arithmetic (HALF2_MATH):
// the step of the main loop and the pieces it needs. Include after decode_chunks.cuh.
//
// Why: with a group of query heads per block, decode over one-byte codes is bound by the
// instructions it issues, not by the bytes (H200, D64 GQA 32/8 in fp32 arithmetic: ~0.19 ms,
// 2.5x the memory floor; with this path 0.129 ms fp8 / 0.135 int8, static scales; MHA fp8
// 0.315 -> 0.303; benchmarks/NOTES.md, round r4). Per code of K the fp32 path converts to float (1.5 instructions) and does one FMA per
// head; here codes become fp16 pairs (every int8 and e4m3 value is an fp16 number) and each
// HFMA2 multiplies two codes by two query elements. The rest of the step is cut the same way:
//   q.k:  q is scaled by a power of two into [-1, 1] (exact) and rounded to fp16; each lane
//         sums its VEC products in fp16 (two chains of VEC/2 in the halves of an HFMA2),
//         then in fp32 across its halves and the token's lanes.
//   the lanes' sums: a reduce-scatter (each exchange halves the heads a lane holds), so that
//         a lane ends with the full dot of one head (GMAX/TG heads when TG < GMAX) instead of
//         every lane holding every head: fewer shuffles, and the online softmax of a head is
//         computed by its owner lanes only, then its weights are sent to the token's lanes.
//   rescaling: the running maximum m moves only when a score exceeds it by more than
//         RESCALE_SLACK (log2 units), so the weights stay <= 2^RESCALE_SLACK and the O(head_dim)
//         rescale of the sums runs only when a warp's lane needs it (rare after the first
//         tokens; H200, D64 GQA 32/8: an exact maximum, rescaling whenever it moves, took
//         0.164 ms against 0.136 with a slack of 4). o / l is unchanged by where m sits.
//   p*v (PV_HALF2, static scales): the weighted V rows are summed in fp16 pairs and added to
//         the fp32 sums every PV_FLUSH steps (ACC_SMEM: those live in shared memory). Per-token
//         V scales make p*scale too small for fp16 (its subnormals), so with them V stays in
//         fp32.
// Error, from the format (tests/test_decode_quant.py states it as a bound): with u = 2^-11
// (fp16's unit roundoff) a score moves by at most (gamma_{VEC/2} + u) * sum_d |q_d k_d| (q's
// rounding, then VEC/2 fused multiply-adds per half), gamma_n = n u / (1 - n u); each output
// element by at most gamma_{U*PV_FLUSH+PV_FLUSH+1} * max |v| + n 2^(PV_SHIFT-24) max |v| with
// PV_HALF2 (p's rounding, U * PV_FLUSH products and PV_FLUSH rescales per fp16 sum; n tokens'
// subnormal weights).
// The fp8 format's own bound is 2^-4 |k| per element: 16 times the score term at VEC = 16.
#ifndef DECODE_HALF2_CUH
#define DECODE_HALF2_CUH

constexpr int HV = VEC / 2;   // fp16 pairs per chunk

// Reduce-scatter geometry: the first SCATTER exchanges (offsets TG/2, TG/4, ...) halve the heads
// a lane holds; HPL heads remain per lane; the lanes of head g are found by owner_lane(g).
constexpr int ilog2(int x) { return x <= 1 ? 0 : 1 + ilog2(x / 2); }
constexpr int SCATTER = ilog2(GMAX) < ilog2(TG) ? ilog2(GMAX) : ilog2(TG);
constexpr int HPL = GMAX >> SCATTER;   // heads per lane after the exchanges

// PV_HALF2: the fp16 sums of V hold PV_FLUSH steps of U tokens, each code <= KV_QMAX, each
// weight <= 2^(SLACK - PV_SHIFT): the weights are computed as exp2(s - m - PV_SHIFT) (l and
// the sums alike, so o / l is unchanged), PV_SHIFT the smallest that keeps the sums finite.
// Weights below 2^-14 are fp16 subnormals: an absolute error of at most 2^-25 each.
constexpr int SLACK = RESCALE_SLACK;
constexpr int PV_TERMS = DECODE_STEP_TOKENS * PV_FLUSH;
constexpr int shift_fits(int k)
{
    return k >= SLACK || PV_TERMS * KV_QMAX * (float)(1 << (SLACK - k)) < 60000.0f
               ? k : shift_fits(k + 1);
}
constexpr int PV_SHIFT = PV_HALF2 ? shift_fits(0) : 0;
static_assert(!PV_HALF2 || PV_TERMS * KV_QMAX * (float)(1 << (SLACK - PV_SHIFT)) < 60000.0f,
              "the fp16 sums of V could overflow: lower PV_FLUSH or the unroll");

// The bits of a register as an fp16 pair and back (the low half first; no instruction).
__device__ inline __half2 bits_half2(unsigned b) { return *reinterpret_cast<const __half2*>(&b); }
__device__ inline unsigned half2_bits(__half2 h) { return *reinterpret_cast<const unsigned*>(&h); }

// A chunk of VEC codes as HV fp16 pairs, exactly (no scale, no CODE_UNIT):
//   int8: bytes [code + 128, 0x64] are the fp16 number 1024 + 128 + code; one byte permute
//         builds a pair, one subtraction leaves the codes;
//   e4m3: the GPU's conversion (sm_89+), else the bits moved into place (value / 2^8, see
//         unpack_cache) times 2^8, exact.
__device__ inline void codes_half2(const chunk_t& raw, __half2* out)
{
    const unsigned* words = reinterpret_cast<const unsigned*>(&raw);
#pragma unroll
    for (int j = 0; j < CHUNK_BYTES / 4; ++j) {
#if KV_QUANT == 1
        const unsigned biased = words[j] ^ 0x80808080u;
#pragma unroll
        for (int p = 0; p < 2; ++p)
            out[2 * j + p] = __hsub2(bits_half2(__byte_perm(biased, 0x64646464u,
                                                            p ? 0x4342u : 0x4140u)),
                                     __float2half2_rn(1152.0f));
#else
#ifdef FP8_HW_CVT
        unsigned lo, hi;   // both pairs of the word in one asm: no 16-bit moves in between
        asm("{\n .reg .b16 a, b;\n mov.b32 {a, b}, %2;\n"
            " cvt.rn.f16x2.e4m3x2 %0, a;\n cvt.rn.f16x2.e4m3x2 %1, b;\n}"
            : "=r"(lo), "=r"(hi) : "r"(words[j]));
        out[2 * j] = bits_half2(lo);
        out[2 * j + 1] = bits_half2(hi);
#else
#pragma unroll
        for (int p = 0; p < 2; ++p) {   // code / 2^8 as in unpack_cache (sign added, not or-ed)
            const unsigned x = __byte_perm(words[j], 0u, p ? 0x3424u : 0x1404u);
            out[2 * j + p] = __hmul2(bits_half2((x & 0x80008000u) + ((x >> 1) & 0x3f803f80u)),
                                     __float2half2_rn(256.0f));
        }
#endif
#endif
    }
}

// q's slices as fp16 pairs scaled into [-1, 1] by a power of two per head (the same in all the
// token's lanes: their largest |q| is shared by shuffles); q_unit[g]: what one unit of the fp16
// dot of head g is worth in units of qr's dot (1 / that power of two).
__device__ inline void q_to_half2(const float (&qr)[GMAX][CPT][VEC],
                                  __half2 (&qh)[GMAX][CPT][HV], float (&q_unit)[GMAX])
{
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
        float amax = 0.0f;
#pragma unroll
        for (int c = 0; c < CPT; ++c)
#pragma unroll
            for (int i = 0; i < VEC; ++i) amax = fmaxf(amax, fabsf(qr[g][c][i]));
#pragma unroll
        for (int off = TG >> 1; off > 0; off >>= 1)
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
        // 2^(126 - e) <= 1 / amax for amax's biased exponent e: amax * mult < 1
        const int e = (int)((__float_as_uint(amax) >> 23) & 0xffu);
        const float mult = e == 0 ? 1.0f : __uint_as_float((unsigned)max(253 - e, 1) << 23);
        q_unit[g] = 1.0f / mult;   // exact: a power of two
#pragma unroll
        for (int c = 0; c < CPT; ++c)
#pragma unroll
            for (int i = 0; i < HV; ++i)
                qh[g][c][i] = __floats2half2_rn(qr[g][c][2 * i] * mult, qr[g][c][2 * i + 1] * mult);
    }
}

// Q_SMEM: q's pairs live in shared memory, read as HFMA2 operands where each token meets them
// (two 16-byte loads per head and token), instead of GMAX * CPT * HV registers: the 4-head
// kernel drops from 168 registers (3 blocks per SM) to 128 (4), and the register copies
// ptxas made of the loop-invariant q pairs around the HFMA2s (~90 MOV per step) go.
// Layout: 16-byte piece h of chunk c of head g, lane gl of the token's group, at
// q_s[((g * CPT + c) * NQ4 + h) * TG + gl]: a group's lanes read 16 consecutive bytes each
// (no bank conflict), the other groups of the warp the same addresses (a broadcast).
constexpr int NQ4 = HV / 4;   // 16-byte pieces of q pairs per chunk
static_assert(!Q_SMEM || HV % 4 == 0, "Q_SMEM: whole 16-byte pieces of q pairs");

struct QPairs {   // the q pairs of this lane: in registers, or where they are in shared memory
#if Q_SMEM
    const uint4* s;
#else
    __half2 r[GMAX][CPT][HV];
#endif
};

// A 16-byte shared-memory load that the compiler may not hoist out of the loop (it would
// bring q back into registers): volatile on the GPU; a plain read in the CPU executor.
__device__ inline uint4 lds16(const uint4* p)
{
#if defined(__CUDA_ARCH__)
    uint4 r;
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ld.volatile.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "r"(a));
    return r;
#else
    return *p;
#endif
}

// Head g's pairs of chunk c (this lane's).
__device__ inline void q_pairs(const QPairs& q, int g, int c, __half2 (&out)[HV])
{
#if Q_SMEM
#pragma unroll
    for (int h = 0; h < NQ4; ++h) {
        const uint4 x = lds16(q.s + ((g * CPT + c) * NQ4 + h) * TG);
        out[4 * h] = bits_half2(x.x), out[4 * h + 1] = bits_half2(x.y);
        out[4 * h + 2] = bits_half2(x.z), out[4 * h + 3] = bits_half2(x.w);
    }
#else
#pragma unroll
    for (int i = 0; i < HV; ++i) out[i] = q.r[g][c][i];
#endif
}

// The adds and exchanges of reduce_scatter, for fp32 scores and (DOT_PACK) fp16 pairs of them.
__device__ inline float add_score(float a, float b) { return a + b; }
__device__ inline __half2 add_score(__half2 a, __half2 b) { return __hadd2(a, b); }
__device__ inline float shfl_score(float x, int off)
{
    return __shfl_xor_sync(0xffffffffu, x, off);
}
__device__ inline __half2 shfl_score(__half2 x, int off)
{
    return bits_half2(__shfl_xor_sync(0xffffffffu, half2_bits(x), off));
}

// Sum v over the TG lanes of a token while scattering the heads: on return v[0 .. HPL) hold
// the full sums of heads head_base(gl) .. + HPL (v[HPL ..) are left undefined).
// With Q_SMEM the heads arrive permuted per lane (v[j] is head j ^ head_base(gl), q_smem's
// layout): at each exchange every lane keeps its lower half of the heads and sends its upper
// half, which are the partner's lower half, without selecting by lane.
template <int U, typename T>
__device__ inline void reduce_scatter(T (&v)[GMAX][U], int gl)
{
#pragma unroll
    for (int k = 0; k < SCATTER; ++k) {
        const int off = TG >> (k + 1), half = GMAX >> (k + 1);
#pragma unroll
        for (int j = 0; j < half; ++j)
#pragma unroll
            for (int u = 0; u < U; ++u) {
#if Q_SMEM
                const T sent = v[j + half][u];   // the partner's heads j .. of this exchange
                v[j][u] = add_score(v[j][u], shfl_score(sent, off));
#else
                const bool upper = gl & off;
                const T send = upper ? v[j][u] : v[j + half][u];
                const T keep = upper ? v[j + half][u] : v[j][u];
                v[j][u] = add_score(keep, shfl_score(send, off));
#endif
            }
    }
#pragma unroll
    for (int off = TG >> (SCATTER + 1); off > 0; off >>= 1)
#pragma unroll
        for (int j = 0; j < HPL; ++j)
#pragma unroll
            for (int u = 0; u < U; ++u) v[j][u] = add_score(v[j][u], shfl_score(v[j][u], off));
}

// The first head a lane holds after reduce_scatter, and a lane of the token's group that holds
// head g.
__device__ inline int head_base(int gl)
{
    int hb = 0;
#pragma unroll
    for (int k = 0; k < SCATTER; ++k)
        if (gl & (TG >> (k + 1))) hb += GMAX >> (k + 1);
    return hb;
}

__device__ inline int owner_lane(int g)
{
    int l = 0;
#pragma unroll
    for (int k = 0; k < SCATTER; ++k)
        if (g & (GMAX >> (k + 1))) l += TG >> (k + 1);
    return l;
}

// Head g's value from its owner (every lane of the warp calls this with the same g).
__device__ inline float from_owner(const float (&x)[HPL], int g, int lane)
{
    if (SCATTER == 0) return x[g];
    return __shfl_sync(0xffffffffu, x[g % HPL], (lane & ~(TG - 1)) | owner_lane(g));
}

__device__ inline unsigned from_owner_bits(const unsigned (&x)[HPL], int g, int lane)
{
    if (SCATTER == 0) return x[g];
    return __shfl_sync(0xffffffffu, x[g % HPL], (lane & ~(TG - 1)) | owner_lane(g));
}

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

// One step of U tokens per thread group (see the top), in two halves (SPLIT_PREFETCH issues
// the next step's K loads between them, into the registers the first has finished with).
// The first: q.k of the U tokens summed over the token's lanes; dot[0 .. HPL) are this
// lane's heads' (head_base(gl) + j) scores, unscaled.
template <int U>
__device__ inline void half2_dots(const chunk_t (&kraw)[U][CPT], const QPairs& qh, int gl,
                                  float (&dot)[GMAX][U])
{
    // q.k: the halves of each lane's fp16 dot, then the token's lanes (reduce_scatter); g is
    // the slot of q's pairs (with Q_SMEM head g ^ head_base(gl), see reduce_scatter).
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
            for (int c = 0; c < CPT; ++c) {
                __half2 qp[HV];
                q_pairs(qh, g, c, qp);
#pragma unroll
                for (int i = 0; i < HV; ++i) a = __hfma2(qp[i], kh[c][i], a);
            }
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

#endif  // DECODE_HALF2_CUH
