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
