// fp8 (cuda_fp8.h) for the CPU executor, in software: __nv_fp8_e4m3, __nv_fp8_e5m2, their
// x2/x4 packs and the __nv_cvt_* conversions. Included by include/cuda_fp8.h.
//
// e4m3: bias 7, no infinity, 0x7f/0xff NaN, largest finite 448, smallest subnormal 2^-9.
// e5m2: bias 15, infinity 0x7c, NaN above it, largest finite 57344, smallest 2^-16.
// To fp8: round to nearest even from the exact value (floats, halves and bf16 convert
// exactly to float first). Beyond the largest finite value (after rounding; infinities
// included), __NV_SATFINITE gives the largest finite value of the sign, __NV_NOSAT gives NaN
// (e4m3) or infinity (e5m2). The classes' constructors saturate, as CUDA's do. NaN becomes
// 0x7f (both kinds, any sign), as on the GPU. From fp8 everything is exact; NaN becomes the
// canonical half 0x7fff. Checked bit for bit against CUDA 13's cuda_fp8.hpp on 4 million
// floats, and against ml_dtypes in tests/test_cpu_fp8.py.
#ifndef PAGEDATTN_LAB_SHIM_FP8_H
#define PAGEDATTN_LAB_SHIM_FP8_H

typedef unsigned char __nv_fp8_storage_t;
typedef unsigned short int __nv_fp8x2_storage_t;
typedef unsigned int __nv_fp8x4_storage_t;
enum __nv_saturation_t { __NV_NOSAT, __NV_SATFINITE };
enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 };

static inline __nv_fp8_storage_t __pal_to_fp8(float x, __nv_saturation_t sat,
                                              __nv_fp8_interpretation_t kind)
{
    const bool e4 = kind == __NV_E4M3;
    const int mbits = e4 ? 3 : 2, bias = e4 ? 7 : 15;
    const float max_finite = e4 ? 448.0f : 57344.0f;
    const unsigned char max_code = e4 ? 0x7e : 0x7b;
    const unsigned char sign = (__pal_f2u(x) >> 24) & 0x80u;
    const float ax = fabsf(x);
    if (ax != ax) return 0x7f;   // the canonical NaN of both kinds, whatever the sign
    if (ax == 0.0f) return sign;
    if (ax > 3.0e38f) return sign | (sat == __NV_SATFINITE ? max_code : (e4 ? 0x7f : 0x7c));
    // The spacing of fp8 values around ax: 2^(e - mbits) for normals, 2^(1 - bias - mbits)
    // below the smallest normal. ax / step is exact (a power-of-two scaling), rintf rounds it
    // to nearest even.
    int e;
    frexpf(ax, &e);   // ax = f * 2^e with 0.5 <= f < 1: the leading bit is 2^(e-1)
    const int lead = (e - 1) < (1 - bias) ? (1 - bias) : (e - 1);
    const float q = rintf(ldexpf(ax, mbits - lead));
    const float v = ldexpf(q, lead - mbits);
    if (!(v <= max_finite))
        return sign | (sat == __NV_SATFINITE ? max_code : (e4 ? 0x7f : 0x7c));
    if (v < ldexpf(1.0f, 1 - bias)) return sign | (unsigned char)q;   // subnormal (or 0)
    int ve;
    frexpf(v, &ve);
    const unsigned m = (unsigned)ldexpf(v, mbits - (ve - 1)) - (1u << mbits);
    return sign | (unsigned char)(((unsigned)(ve - 1 + bias) << mbits) | m);
}

static inline float __pal_fp8_to_float(__nv_fp8_storage_t b, __nv_fp8_interpretation_t kind)
{
    const bool e4 = kind == __NV_E4M3;
    const int mbits = e4 ? 3 : 2, bias = e4 ? 7 : 15;
    const unsigned e = (b & 0x7fu) >> mbits, m = b & ((1u << mbits) - 1u);
    float v;
    if (e4 && (b & 0x7fu) == 0x7fu) v = __pal_u2f(0x7fffffffu);
    else if (!e4 && e == 31) v = m ? __pal_u2f(0x7fffffffu) : __pal_u2f(0x7f800000u);
    else if (e == 0) v = ldexpf((float)m, 1 - bias - mbits);
    else v = ldexpf((float)(m + (1u << mbits)), (int)e - bias - mbits);
    return (b & 0x80u) ? -v : v;
}

// ---- the __nv_cvt_* functions ----
static inline __nv_fp8_storage_t __nv_cvt_float_to_fp8(float x, __nv_saturation_t s,
                                                       __nv_fp8_interpretation_t k)
{ return __pal_to_fp8(x, s, k); }
static inline __nv_fp8_storage_t __nv_cvt_double_to_fp8(double x, __nv_saturation_t s,
                                                        __nv_fp8_interpretation_t k)
{   // through float: exact unless x needs more than float's 24 bits (a double rounding)
    return __pal_to_fp8((float)x, s, k);
}
static inline __nv_fp8x2_storage_t __nv_cvt_float2_to_fp8x2(float2 x, __nv_saturation_t s,
                                                           __nv_fp8_interpretation_t k)
{ return (__nv_fp8x2_storage_t)(__pal_to_fp8(x.x, s, k) | (__pal_to_fp8(x.y, s, k) << 8)); }
static inline __nv_fp8_storage_t __nv_cvt_halfraw_to_fp8(__half_raw x, __nv_saturation_t s,
                                                         __nv_fp8_interpretation_t k)
{ return __pal_to_fp8(__pal_half_bits_to_float(x.x), s, k); }
static inline __nv_fp8x2_storage_t __nv_cvt_halfraw2_to_fp8x2(__half2_raw x, __nv_saturation_t s,
                                                             __nv_fp8_interpretation_t k)
{
    return (__nv_fp8x2_storage_t)(__pal_to_fp8(__pal_half_bits_to_float(x.x), s, k) |
                                  (__pal_to_fp8(__pal_half_bits_to_float(x.y), s, k) << 8));
}
static inline __half_raw __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t x,
                                                 __nv_fp8_interpretation_t k)
{
    __half_raw r;
    const float f = __pal_fp8_to_float(x, k);
    r.x = f != f ? 0x7fffu : __pal_float_to_half_bits(f);   // exact: every fp8 is a half
    return r;
}
static inline __half2_raw __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t x,
                                                     __nv_fp8_interpretation_t k)
{
    __half2_raw r;
    r.x = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)x, k).x;
    r.y = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)(x >> 8), k).x;
    return r;
}
static inline __nv_fp8_storage_t __nv_cvt_bfloat16raw_to_fp8(__nv_bfloat16_raw x,
                                                             __nv_saturation_t s,
                                                             __nv_fp8_interpretation_t k)
{ return __pal_to_fp8(__pal_bf16_bits_to_float(x.x), s, k); }

// ---- the classes: constructors saturate (__NV_SATFINITE); conversions are explicit ----
#define PAL_FP8_CLASS(NAME, KIND)                                                            \
    struct __attribute__((aligned(1))) NAME {                                                \
        __nv_fp8_storage_t __x;                                                              \
        NAME() = default;                                                                    \
        explicit NAME(float f) : __x(__pal_to_fp8(f, __NV_SATFINITE, KIND)) {}               \
        explicit NAME(double f) : __x(__pal_to_fp8((float)f, __NV_SATFINITE, KIND)) {}       \
        explicit NAME(__half f)                                                              \
            : __x(__pal_to_fp8(__pal_half_bits_to_float(f.__x), __NV_SATFINITE, KIND)) {}    \
        explicit NAME(__nv_bfloat16 f)                                                       \
            : __x(__pal_to_fp8(__pal_bf16_bits_to_float(f.__x), __NV_SATFINITE, KIND)) {}    \
        explicit NAME(int i) : __x(__pal_to_fp8((float)i, __NV_SATFINITE, KIND)) {}          \
        explicit NAME(unsigned int i) : __x(__pal_to_fp8((float)i, __NV_SATFINITE, KIND)) {} \
        explicit NAME(long long i) : __x(__pal_to_fp8((float)i, __NV_SATFINITE, KIND)) {}    \
        explicit operator float() const { return __pal_fp8_to_float(__x, KIND); }            \
        explicit operator double() const { return __pal_fp8_to_float(__x, KIND); }           \
        explicit operator __half() const                                                     \
        { return __half(__nv_cvt_fp8_to_halfraw(__x, KIND)); }                              \
        explicit operator __nv_bfloat16() const                                              \
        { return __float2bfloat16(__pal_fp8_to_float(__x, KIND)); }                          \
        explicit operator bool() const { return (__x & 0x7fu) != 0; }                        \
        explicit operator int() const { return (int)__pal_fp8_to_float(__x, KIND); }         \
    };
PAL_FP8_CLASS(__nv_fp8_e4m3, __NV_E4M3)
PAL_FP8_CLASS(__nv_fp8_e5m2, __NV_E5M2)
#undef PAL_FP8_CLASS

#define PAL_FP8X_CLASSES(X2, X4, KIND)                                                       \
    struct __attribute__((aligned(2))) X2 {                                                  \
        __nv_fp8x2_storage_t __x;                                                            \
        X2() = default;                                                                      \
        explicit X2(float2 f) : __x(__nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, KIND)) {}     \
        explicit X2(__half2 h)                                                               \
            : __x(__nv_cvt_halfraw2_to_fp8x2(__half2_raw(h), __NV_SATFINITE, KIND)) {}       \
        explicit operator float2() const                                                     \
        {                                                                                    \
            return make_float2(__pal_fp8_to_float((__nv_fp8_storage_t)__x, KIND),            \
                               __pal_fp8_to_float((__nv_fp8_storage_t)(__x >> 8), KIND));    \
        }                                                                                    \
        explicit operator __half2() const                                                    \
        { return __half2(__nv_cvt_fp8x2_to_halfraw2(__x, KIND)); }                           \
    };                                                                                       \
    struct __attribute__((aligned(4))) X4 {                                                  \
        __nv_fp8x4_storage_t __x;                                                            \
        X4() = default;                                                                      \
        explicit X4(float4 f)                                                                \
            : __x((__nv_fp8x4_storage_t)__nv_cvt_float2_to_fp8x2(make_float2(f.x, f.y),      \
                                                                 __NV_SATFINITE, KIND) |     \
                  ((__nv_fp8x4_storage_t)__nv_cvt_float2_to_fp8x2(make_float2(f.z, f.w),     \
                                                                  __NV_SATFINITE, KIND)     \
                   << 16)) {}                                                                \
        explicit operator float4() const                                                     \
        {                                                                                    \
            return make_float4(__pal_fp8_to_float((__nv_fp8_storage_t)__x, KIND),            \
                               __pal_fp8_to_float((__nv_fp8_storage_t)(__x >> 8), KIND),     \
                               __pal_fp8_to_float((__nv_fp8_storage_t)(__x >> 16), KIND),    \
                               __pal_fp8_to_float((__nv_fp8_storage_t)(__x >> 24), KIND));   \
        }                                                                                    \
    };
PAL_FP8X_CLASSES(__nv_fp8x2_e4m3, __nv_fp8x4_e4m3, __NV_E4M3)
PAL_FP8X_CLASSES(__nv_fp8x2_e5m2, __nv_fp8x4_e5m2, __NV_E5M2)
#undef PAL_FP8X_CLASSES

#endif
