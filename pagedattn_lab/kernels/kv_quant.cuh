// Compressed KV codes: one byte per element, value = code * scale (pagedattn_lab/quant.py is
// the NumPy reference; these functions match it bit for bit).
//
//   -DKV_QUANT=1  int8, symmetric: code = rint(x / scale) clamped to +-127; NaN stored as 0
//   -DKV_QUANT=2  fp8 e4m3fn (as vLLM stores it, uint8 bits): round to nearest even,
//                 saturated at +-448 (__NV_SATFINITE); NaN stays NaN (0x7f with its sign)
//
// The e4m3 conversions are integer bit manipulation rather than cuda_fp8.h, so the same
// text compiles under NVRTC and in the CPU executor. Caches are passed as unsigned char*
// for both formats (an int8 cache is viewed as uint8 by the wrappers).
#ifndef KV_QUANT_CUH
#define KV_QUANT_CUH

#ifndef KV_QUANT
#define KV_QUANT 0
#endif
// 1: one scale per (token, KV head), index slot * num_kv_heads + kv_head; 0: one per KV head.
#ifndef PER_TOKEN_SCALES
#define PER_TOKEN_SCALES 0
#endif
#if KV_QUANT == 1
#define KV_QMAX 127.0f
#elif KV_QUANT == 2
#define KV_QMAX 448.0f
#endif

__device__ inline unsigned char float_to_e4m3(float x)
{
    unsigned u = __float_as_uint(x);
    unsigned sign = (u >> 24) & 0x80u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (unsigned char)(sign | 0x7fu);    // NaN
    if (a >= 0x43e00000u) return (unsigned char)(sign | 0x7eu);   // >= 448, inf: saturate
    if (a < 0x3c800000u)                                          // below 2^-6: subnormal,
        return (unsigned char)(sign | (unsigned)rintf(fabsf(x) * 512.0f));   // steps of 2^-9
    unsigned mant = a & 0x7fffffu;
    unsigned code = (((a >> 23) - 120u) << 3) | (mant >> 20);   // rebias 127 -> 7, 3 bits
    unsigned rest = mant & 0xfffffu;                               // the 20 bits cut off
    if (rest > 0x80000u || (rest == 0x80000u && (code & 1u))) ++code;   // nearest, ties even
    return (unsigned char)(sign | code);   // a carry moves into the exponent, as it should
}

__device__ inline float e4m3_to_float(unsigned char c)
{
    unsigned sign = (unsigned)(c & 0x80u) << 24, e = (c >> 3) & 0xfu, m = c & 7u;
    if (e == 15u && m == 7u) return __uint_as_float(sign | 0x7fc00000u);
    if (e == 0u) return __uint_as_float(sign | __float_as_uint((float)m * 0.001953125f));
    return __uint_as_float(sign | ((e + 120u) << 23) | (m << 20));
}

#if KV_QUANT != 0
// The code of an already scaled value (x / scale).
__device__ inline unsigned char quantize_code(float x)
{
#if KV_QUANT == 1
    if (x != x) return 0;
    return (unsigned char)(signed char)(int)rintf(fminf(fmaxf(x, -127.0f), 127.0f));
#else
    return float_to_e4m3(x);
#endif
}

// The value of a code, without the scale.
__device__ inline float dequantize_code(unsigned char c)
{
#if KV_QUANT == 1
    return (float)(signed char)c;
#else
    return e4m3_to_float(c);
#endif
}
#endif

#endif  // KV_QUANT_CUH
