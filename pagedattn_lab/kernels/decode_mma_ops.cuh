// The register-level helpers of the PTX tensor-core decode kernels over KV_T (fp16/bf16)
// and compressed pages: one mma for the cache's element type, the pack of two floats, and
// the in-register conversion of int8 / fp8 e4m3 codes (four per 32-bit word), shared by
// decode_mma.cu and decode_mma_rows.cu. Include after common.cuh, kv_quant.cuh,
// kv_convert.cuh and mma_ptx.cuh.
#ifndef DECODE_MMA_OPS_CUH
#define DECODE_MMA_OPS_CUH

// d += a b for the cache's element type
__device__ inline void mma_acc(float d[4], const unsigned a[4], const unsigned b[2])
{
#ifdef KV_BF16
    mma_m16n8k16_bf16(d, a, b, d);
#else
    mma_m16n8k16(d, a, b, d);
#endif
}

__device__ inline unsigned pack2(float lo, float hi)
{
#ifdef KV_BF16
    return pack2_bf16(lo, hi);
#else
    return pack2_half(lo, hi);
#endif
}

#ifndef FP8_BITS   // e4m3 codes to fp16 by moving bits (1 = yes, 0 = the conversion instruction)
#define FP8_BITS 0
#endif
#ifndef CVT_DIRECT   // codes4_to_kv in PTX on whole registers (0: the __half2 form)
#define CVT_DIRECT 1
#endif
#if KV_QUANT == 2 && FP8_BITS && !defined(KV_BF16)
constexpr float CODE_UNIT = 256.0f;   // the converted codes are value / 256 (see codes4_to_kv)
#else
constexpr float CODE_UNIT = 1.0f;
#endif

#if KV_QUANT
// Two e4m3 codes, placed in bytes 1 and 3, to two fp16 of value / 256, by moving bits: the
// code's 4 exponent and 3 mantissa bits under fp16's (a bias 8 smaller: x 2^-8, exact, also
// for subnormals); the NaN codes (s1111111, which would come out as +-480 / 256, above every
// finite code) get fp16's exponent bits set: NaN stays NaN.
__device__ inline unsigned e4m3x2_bits(unsigned t)
{
    const unsigned h = (t & 0x80008000u) | ((t >> 1) & 0x3f803f80u);
    return h | (((h & 0x7fff7fffu) + 0x00800080u) & 0x40004000u);
}

// Four codes (c0 in the low byte) to two registers of two KV_T values: (c0, c1) and (c2, c3),
// exactly (every int8 and e4m3 value is a 16-bit float), no scale (but CODE_UNIT). fp16: int8
// as 1024 + 128 + c with the code as the low mantissa byte (two byte permutes and two half2
// subtractions for four codes); e4m3 by the sm_89+ instruction (kv_convert.cuh) or, with
// FP8_BITS, by moving bits (e4m3x2_bits). bf16: one code at a time through float.
__device__ inline void codes4_to_kv(unsigned four, unsigned& lo, unsigned& hi)
{
#if KV_QUANT == 2 && FP8_BITS && !defined(KV_BF16)
    lo = e4m3x2_bits(__byte_perm(four, 0u, 0x1404));   // c0, c1 into bytes 1, 3
    hi = e4m3x2_bits(__byte_perm(four, 0u, 0x3424));   // c2, c3
    return;
#elif KV_QUANT == 2 && CVT_DIRECT && !defined(KV_BF16) && defined(__CUDA_ARCH__) \
    && __CUDA_ARCH__ >= 890
    // the word's two halves straight into the two conversions: 2 instructions for 4 codes
    // (through codes2_to_half2's __half2 round trip ptxas emitted 3 shifts and 2 byte
    // permutes more: unpacking and repacking the same register)
    asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n"
        " cvt.rn.f16x2.e4m3x2 %0, l;\n cvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
        : "=r"(lo), "=r"(hi) : "r"(four));
    return;
#elif KV_QUANT == 1 && CVT_DIRECT && !defined(KV_BF16) && defined(__CUDA_ARCH__)
    // int8 likewise: two byte permutes and two f16x2 subtractions on the registers as they
    // are (the __half2 form below compiled to ~11 instructions per four codes instead of 5)
    {
        const unsigned x = four ^ 0x80808080u;   // c + 128, as unsigned bytes
        const unsigned b0 = __byte_perm(x, 0x64646464u, 0x4140);   // 1024 + 128 + c0, + c1
        const unsigned b1 = __byte_perm(x, 0x64646464u, 0x4342);
        asm("sub.rn.f16x2 %0, %1, %2;\n" : "=r"(lo) : "r"(b0), "r"(0x64806480u));   // - 1152
        asm("sub.rn.f16x2 %0, %1, %2;\n" : "=r"(hi) : "r"(b1), "r"(0x64806480u));
        return;
    }
#endif
#ifdef KV_BF16
    lo = pack2_bf16(dequantize_code((unsigned char)(four & 0xffu)),
                    dequantize_code((unsigned char)((four >> 8) & 0xffu)));
    hi = pack2_bf16(dequantize_code((unsigned char)((four >> 16) & 0xffu)),
                    dequantize_code((unsigned char)(four >> 24)));
#else
    __half2 h0, h1;
#if KV_QUANT == 1
    const unsigned x = four ^ 0x80808080u;   // c + 128, as unsigned bytes
    const __half2 bias = __float2half2_rn(1152.0f);
    const unsigned b0 = __byte_perm(x, 0x64646464u, 0x4140), b1 = __byte_perm(x, 0x64646464u, 0x4342);
    h0 = __hsub2(__halves2half2(__ushort_as_half((unsigned short)(b0 & 0xffffu)),
                                __ushort_as_half((unsigned short)(b0 >> 16))), bias);
    h1 = __hsub2(__halves2half2(__ushort_as_half((unsigned short)(b1 & 0xffffu)),
                                __ushort_as_half((unsigned short)(b1 >> 16))), bias);
#else
    h0 = codes2_to_half2(four & 0xffffu);
    h1 = codes2_to_half2(four >> 16);
#endif
    lo = (unsigned)__half_as_ushort(__low2half(h0)) | ((unsigned)__half_as_ushort(__high2half(h0)) << 16);
    hi = (unsigned)__half_as_ushort(__low2half(h1)) | ((unsigned)__half_as_ushort(__high2half(h1)) << 16);
#endif
}

__device__ inline unsigned word_of(const uint4& x, int i)
{
    return i == 0 ? x.x : i == 1 ? x.y : i == 2 ? x.z : x.w;
}

// Word w (bytes 4w .. 4w + 3) of a lane's four V rows of codes (load_code_quad: tokens 2t,
// 2t + 1, 2t + 8, 2t + 9) as token pairs converted: p01[c] holds byte 4w + c of tokens 2t and
// 2t + 1, p89[c] of tokens 2t + 8 and 2t + 9 (the k pairs of P V's operand over tokens)
__device__ inline void token_pairs(const uint4 (&raw)[4], int w, unsigned (&p01)[4],
                                   unsigned (&p89)[4])
{
    const unsigned a0 = word_of(raw[0], w), a1 = word_of(raw[1], w);
    const unsigned a8 = word_of(raw[2], w), a9 = word_of(raw[3], w);
    codes4_to_kv(__byte_perm(a0, a1, 0x5140), p01[0], p01[1]);
    codes4_to_kv(__byte_perm(a0, a1, 0x7362), p01[2], p01[3]);
    codes4_to_kv(__byte_perm(a8, a9, 0x5140), p89[0], p89[1]);
    codes4_to_kv(__byte_perm(a8, a9, 0x7362), p89[2], p89[3]);
}
#endif

// ---- -DQK_MMA8=1: S^T = K Q^T on 8-bit tensor cores straight from the K codes ----------
// (decode_mma_rows.cu over codes, groups up to 4.) A = the K codes as staged, by ldmatrix (an
// 8x8 matrix of 16-bit values is 8 rows of 16 codes: register i of lane 4g + t = row g,
// codes 4t .. 4t + 3 of matrix i, mma_m16n8k32's A layout with k doubled; no conversion),
// B = q quantized to the cache's 8-bit format. A plain 8-bit q would add an error as large as
// the cache's own, so q is split: q' = q f (f per head, a power of two putting max|q'| at most
// QK_TOP), hi = Q8(q'), lo = Q8((q' - hi) / QK_LO), and q' ~ hi + QK_LO lo. Column 2h of the
// n = 8 tile is head h's hi, column 2h + 1 its lo: one mma for both, and lane 4g + t holds
// both halves of head t's scores (its two accumulator columns), so it combines them itself
// (no shuffle) and the softmax has one column per lane, not two. |q' - hi - QK_LO lo|
// per element: int8 <= QK_LO / 2 = 2^-8 with max|q'| >= 63.5 (2^-14 of the head's largest
// |q|); e4m3 <= 2^-8 |q'| + 2^-14 (each rounding 2^-4 relative, subnormals 2^-10 absolute) with
// max|q'| >= 224. The cache's own rounding of K is 2^-4 relative (e4m3) or half a step (int8).
// int8 sums are exact integers (s32); e4m3's are float. On sm_90 e4m3 runs as conversions and
// HMMA (mma_ptx.cuh), s8 on IMMA.
#if QK_MMA8
static_assert(KV_QUANT != 0, "QK_MMA8: S over compressed pages (the K codes are A)");
#if KV_QUANT == 1
typedef int qk_acc_t;
constexpr float QK_TOP = 127.0f, QK_LO = 1.0f / 128;   // |q' - hi| <= 1/2: |lo| <= 64
constexpr int QK_EXP = 7;                               // 2^7 > 127 >= 2^6
#else
typedef float qk_acc_t;
constexpr float QK_TOP = 448.0f, QK_LO = 1.0f / 16;    // |q' - hi| <= 16: |lo| <= 256
constexpr int QK_EXP = 9;                               // 2^9 > 448 >= 2^8
#endif

__device__ inline void mma_qk8(qk_acc_t d[4], const unsigned a[4], const unsigned b[2])
{
#if KV_QUANT == 1
    mma_m16n8k32_s8(d, a, b, d);
#else
    mma_m16n8k32_e4m3(d, a, b, d);
#endif
}

// The largest power of two f with m f <= QK_TOP (1 for m = 0; 2^-126 .. 2^126)
__device__ inline float qk_pow2(float m)
{
    if (!(m > 0.0f)) return 1.0f;
    int e;
    const float fr = frexpf(m, &e);   // m = fr 2^e, 1/2 <= fr < 1
    const int k = QK_EXP - e - (fr * (float)(1 << QK_EXP) > QK_TOP ? 1 : 0);
    return ldexpf(1.0f, k < -126 ? -126 : k > 126 ? 126 : k);
}

// Four values (x0 in the low byte) to their codes; v gets the codes' values
__device__ inline unsigned qk_codes4(const float (&x)[4], float (&v)[4])
{
    unsigned r = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#if KV_QUANT == 1
        const int c = __float2int_rn(x[i]);   // |x| <= 127 (hi) and 64 (lo): no clamp
        v[i] = (float)c;
        r |= ((unsigned)c & 0xffu) << (8 * i);
#else
        const unsigned char c = float_to_e4m3(x[i]);
        v[i] = e4m3_to_float(c);
        r |= (unsigned)c << (8 * i);
#endif
    }
    return r;
}

// B of k step k for lane 4g + t (once per segment, from the segment's Q in shared memory,
// row stride LDQ): column g = head g / 2's hi (g even) or lo (g odd), k 4t .. 4t + 3 and
// 4t + 16 .. 4t + 19 = dims 32k + 4t .. + 3 and 32k + 16 + 4t .. + 3. w: the weights of the
// lane's accumulator columns 2t (hi) and 2t + 1 (lo) of head t, with 1/f and the logits'
// scale in them.
template <int LDQ>
__device__ inline void qk8_operands(unsigned (&qb)[HEAD_DIM / 32][2], float (&w)[2],
                                    const KV_T* qs, int g, int t, float scale_log2)
{
    const KV_T* row = qs + (g >> 1) * LDQ + 4 * t;   // + 32k + 16r + i: B[4t + 16r + i][g]
    float m = 0.0f;
#pragma unroll
    for (int k = 0; k < HEAD_DIM / 32; ++k) {
#pragma unroll
        for (int i = 0; i < 8; ++i)
            m = fmaxf(m, fabsf(to_float(row[32 * k + 16 * (i / 4) + i % 4])));
    }
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));   // the head's max |q|
    const float f = qk_pow2(m);
#pragma unroll
    for (int k = 0; k < HEAD_DIM / 32; ++k) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float x[4], v[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) x[i] = to_float(row[32 * k + 16 * r + i]) * f;
            qb[k][r] = qk_codes4(x, v);
            if (g & 1) {
#pragma unroll
                for (int i = 0; i < 4; ++i) x[i] = (x[i] - v[i]) * (1.0f / QK_LO);   // exact
                qb[k][r] = qk_codes4(x, v);
            }
        }
    }
    w[0] = scale_log2 / __shfl_sync(0xffffffffu, f, 8 * t);   // head t's f (lanes 8t ..)
    w[1] = w[0] * QK_LO;
}

// An m tile's logits of head t (base 2, per-token K scales not yet applied) from its
// accumulators: tokens g (s[0]) and g + 8 (s[2]); s[1], s[3] are not written
__device__ inline void qk8_logits(float (&s)[4], const qk_acc_t (&acc)[4], const float (&w)[2])
{
    s[0] = fmaf((float)acc[1], w[1], (float)acc[0] * w[0]);
    s[2] = fmaf((float)acc[3], w[1], (float)acc[2] * w[0]);
}
#endif

// 2^x for the online softmax: over codes common.cuh's fast_exp2 (one MUFU instruction; its
// error, ~2^-22 relative, is far below the fp16 rounding of P); fp16/bf16 pages keep exp2f
// (their cubins unchanged).
#ifndef SOFTMAX_EX2
#define SOFTMAX_EX2 (KV_QUANT != 0)
#endif
__device__ inline float softmax_exp2(float x)
{
#if SOFTMAX_EX2
    return fast_exp2(x);
#else
    return exp2f(x);
#endif
}

// The scales that apply to a whole KV head: with static scales K's folds into the logits'
// scale and V's into the output's multiplier (returned); per-token scales are applied token
// by token, so only the converted codes' unit remains.
__device__ inline float fold_head_scales(float& scale_log2, const float* k_scale,
                                         const float* v_scale, int kvh)
{
#if KV_QUANT && !PER_TOKEN_SCALES
    scale_log2 *= k_scale[kvh] * CODE_UNIT;
    return v_scale[kvh] * CODE_UNIT;
#else
    scale_log2 *= CODE_UNIT;
    return CODE_UNIT;
#endif
}

#endif  // DECODE_MMA_OPS_CUH
