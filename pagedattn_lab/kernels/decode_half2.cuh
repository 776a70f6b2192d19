// paged_decode (decode.cu) over compressed pages with packed fp16 arithmetic (HALF2_MATH):
// the pieces of the main loop's step (codes to fp16 pairs, q's pairs, the lanes' reduce-scatter);
// the step itself is in decode_half2_step.cuh. Include after decode_chunks.cuh.
//
// Why: with a group of query heads per block, decode over one-byte codes is bound by the
// instructions it issues, not by the bytes (H200, D64 GQA 32/8 in fp32 arithmetic: ~0.19 ms,
// 2.5x the memory floor; with this path 0.115 ms fp8 / 0.122 int8, static scales, round r7;
// MHA fp8 0.315 -> 0.303, round r4; benchmarks/NOTES.md). Per code of K the fp32 path
// converts to float (1.5 instructions) and does one FMA per head; here codes become fp16 pairs (every int8 and e4m3 value is an fp16 number) and each
// HFMA2 multiplies two codes by two query elements. The rest of the step is cut the same way:
//   q.k:  q is scaled by a power of two into [-1, 1] (exact) and rounded to fp16; each lane
//         sums its VEC products in fp16 (two chains of VEC/2 in the halves of an HFMA2),
//         then in fp32 across its halves and the token's lanes; DOT_PACK (4+ heads): in
//         fp16, two tokens' dots per pair (half the shuffles and adds).
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
// rounding, then VEC/2 fused multiply-adds per half; DOT_PACK: gamma_{VEC/2 + 1 + log2 TG},
// the halves and the lanes added in fp16 too), gamma_n = n u / (1 - n u); each output
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
                const bool upper = gl & off;
                const T send = upper ? v[j][u] : v[j + half][u];
                const T keep = upper ? v[j + half][u] : v[j][u];
                v[j][u] = add_score(keep, shfl_score(send, off));
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

#endif  // DECODE_HALF2_CUH
