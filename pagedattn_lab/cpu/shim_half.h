// __half / __half2 (cuda_fp16.h) for the CPU executor.
//
// Conversions are bit-exact IEEE binary16 with round-to-nearest-even, written with integer
// and float32 arithmetic only (no _Float16), so results match the GPU's cvt.rn.f16.f32 and
// NumPy's float16 on every platform. NaN converts to the canonical 0x7fff, like CUDA.
// Arithmetic on halves is done in float and rounded once, which is exact for + - * /.
#ifndef PAGEDATTN_LAB_SHIM_HALF_H
#define PAGEDATTN_LAB_SHIM_HALF_H

static inline unsigned int __pal_f2u(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }
static inline float __pal_u2f(unsigned int u) { float f; memcpy(&f, &u, 4); return f; }
// A value rounded to an integer, as a saturating conversion to int gives it (cvt.*.s32: past
// int's range its end, NaN 0; a C cast gives INT_MIN for both on x86). Shared with
// shim_device.h's conversions.
static inline int pal_saturate_int(double r)
{
    return r != r ? 0 : r >= 2147483647.0 ? 2147483647 : r <= -2147483648.0 ? -2147483647 - 1
                                                                             : (int)r;
}

// double -> float rounded to odd (toward zero, its last bit set when inexact): rounding that
// float to half or bfloat16 then gives what one rounding of the double gives, as the GPU's
// conversions do (a float keeps more than two bits past either format's). A plain (float)d
// rounds twice: 1 + 2^-11 + 2^-40 became half 1.0, not 1.0009765625.
static inline float __pal_double_to_float_odd(double d)
{
    float f = (float)d;
    if ((double)f == d || !(f - f == 0.0f)) return f;   // exact, NaN, or past float's range
    if (fabs((double)f) > fabs(d)) f = nextafterf(f, 0.0f);
    return __pal_u2f(__pal_f2u(f) | 1u);
}

static inline unsigned short __pal_float_to_half_bits(float f)
{
    unsigned int x = __pal_f2u(f);
    unsigned int sign = (x >> 16) & 0x8000u;
    unsigned int ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;                       // NaN -> canonical NaN
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to inf
    if (ax < 0x38800000u) {                                      // half subnormal or zero
        // Adding 0.5f puts the half's smallest step (2^-24) at float's last bit: the float
        // addition then rounds to nearest even exactly as the conversion must.
        float t = __pal_u2f(ax) + 0.5f;
        return (unsigned short)(sign | (__pal_f2u(t) - 0x3f000000u));
    }
    unsigned int odd = (ax >> 13) & 1u;
    ax += 0xc8000fffu + odd;  // rebias exponent by -112 and round to nearest even
    return (unsigned short)(sign | (ax >> 13));
}

static inline float __pal_half_bits_to_float(unsigned short h)
{
    unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    unsigned int e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return __pal_u2f(sign | 0x7f800000u | (m << 13));  // inf / NaN
    if (e == 0) {                                                     // zero / subnormal
        float v = (float)m * 5.9604644775390625e-8f;                  // m * 2^-24, exact
        return sign ? -v : v;
    }
    return __pal_u2f(sign | ((e + 112u) << 23) | (m << 13));
}

struct __half_raw { unsigned short x; };
struct __half2_raw { unsigned short x, y; };

struct __attribute__((aligned(2))) __half {
    unsigned short __x;
    __half() = default;
    __half(const __half_raw &r) : __x(r.x) {}
    __half(float f) : __x(__pal_float_to_half_bits(f)) {}
    __half(double d) : __x(__pal_float_to_half_bits(__pal_double_to_float_odd(d))) {}
    __half(int i) : __x(__pal_float_to_half_bits((float)i)) {}
    __half(unsigned int i) : __x(__pal_float_to_half_bits((float)i)) {}
    __half(long long i) : __x(__pal_float_to_half_bits((float)i)) {}
    __half(unsigned long long i) : __x(__pal_float_to_half_bits((float)i)) {}
    __half(short i) : __x(__pal_float_to_half_bits((float)i)) {}
    __half(unsigned short i) : __x(__pal_float_to_half_bits((float)i)) {}
    operator float() const { return __pal_half_bits_to_float(__x); }
    operator __half_raw() const { __half_raw r; r.x = __x; return r; }
    __half &operator=(const __half_raw &r) { __x = r.x; return *this; }
};
typedef __half half;

struct __attribute__((aligned(4))) __half2 {
    __half x, y;
    __half2() = default;
    __half2(const __half &a, const __half &b) : x(a), y(b) {}
    __half2(const __half2_raw &r) { x.__x = r.x; y.__x = r.y; }
    operator __half2_raw() const { __half2_raw r; r.x = x.__x; r.y = y.__x; return r; }
};
typedef __half2 half2;

static inline __half __pal_hraw(unsigned short b) { __half h; h.__x = b; return h; }

// ---- conversions ----
static inline __half __float2half(float a) { return __pal_hraw(__pal_float_to_half_bits(a)); }
static inline __half __float2half_rn(float a) { return __float2half(a); }
static inline __half __double2half(double a) { return __float2half(__pal_double_to_float_odd(a)); }
static inline float __half2float(__half a) { return __pal_half_bits_to_float(a.__x); }
static inline __half __int2half_rn(int i) { return __float2half((float)i); }
static inline int __half2int_rz(__half h) { return pal_saturate_int(truncf(__half2float(h))); }
static inline int __half2int_rn(__half h) { return pal_saturate_int(rintf(__half2float(h))); }
static inline int __half2int_rd(__half h) { return pal_saturate_int(floorf(__half2float(h))); }
static inline int __half2int_ru(__half h) { return pal_saturate_int(ceilf(__half2float(h))); }
static inline __half __short2half_rn(short i) { return __float2half((float)i); }
static inline __half __ushort2half_rn(unsigned short i) { return __float2half((float)i); }
static inline __half __uint2half_rn(unsigned i) { return __float2half((float)i); }
static inline __half __ll2half_rn(long long i) { return __float2half((float)i); }
// Directed roundings: the nearest half, stepped one unit back where it went the wrong way.
static inline __half __pal_half_step(float f, int dir)   // dir: 0 toward zero, -1 down, +1 up
{
    __half r = __float2half(f);
    const float v = __half2float(r);
    const bool neg = r.__x & 0x8000u;
    if (dir == 0 ? fabsf(v) > fabsf(f) : dir < 0 ? v > f : v < f)
        r.__x = (unsigned short)(r.__x + ((dir == 0 || (dir < 0) != neg) ? -1 : 1));
    return r;
}
static inline __half __float2half_rz(float f) { return __pal_half_step(f, 0); }
static inline __half __float2half_rd(float f) { return __pal_half_step(f, -1); }
static inline __half __float2half_ru(float f) { return __pal_half_step(f, 1); }
static inline __half2 __float2half2_rn(float a) { __half h = __float2half(a); return __half2(h, h); }
static inline __half2 __floats2half2_rn(float a, float b) { return __half2(__float2half(a), __float2half(b)); }
static inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
static inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
static inline float __low2float(__half2 h) { return __half2float(h.x); }
static inline float __high2float(__half2 h) { return __half2float(h.y); }
static inline __half __low2half(__half2 h) { return h.x; }
static inline __half __high2half(__half2 h) { return h.y; }
static inline __half2 __halves2half2(__half lo, __half hi) { return __half2(lo, hi); }
static inline __half2 __half2half2(__half a) { return __half2(a, a); }
static inline __half2 __lows2half2(__half2 a, __half2 b) { return __half2(a.x, b.x); }
static inline __half2 __highs2half2(__half2 a, __half2 b) { return __half2(a.y, b.y); }
static inline __half2 make_half2(__half x, __half y) { return __half2(x, y); }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline short __half_as_short(__half h) { return (short)h.__x; }
static inline __half __ushort_as_half(unsigned short u) { return __pal_hraw(u); }
static inline __half __short_as_half(short s) { return __pal_hraw((unsigned short)s); }

// ---- arithmetic (computed in float, rounded once) ----
#define PAL_H(f) __float2half(f)
#define PAL_F(h) __half2float(h)
static inline __half __hadd(__half a, __half b) { return PAL_H(PAL_F(a) + PAL_F(b)); }
static inline __half __hsub(__half a, __half b) { return PAL_H(PAL_F(a) - PAL_F(b)); }
static inline __half __hmul(__half a, __half b) { return PAL_H(PAL_F(a) * PAL_F(b)); }
static inline __half __hdiv(__half a, __half b) { return PAL_H(PAL_F(a) / PAL_F(b)); }
static inline __half __hneg(__half a) { return __pal_hraw((unsigned short)(a.__x ^ 0x8000u)); }
static inline __half __habs(__half a) { return __pal_hraw((unsigned short)(a.__x & 0x7fffu)); }
static inline __half __hfma(__half a, __half b, __half c)
{ return __float2half(__pal_double_to_float_odd((double)PAL_F(a) * PAL_F(b) + PAL_F(c))); }
static inline __half __hmax(__half a, __half b) { return PAL_H(fmaxf(PAL_F(a), PAL_F(b))); }
static inline __half __hmin(__half a, __half b) { return PAL_H(fminf(PAL_F(a), PAL_F(b))); }
static inline bool __heq(__half a, __half b) { return PAL_F(a) == PAL_F(b); }
static inline bool __hne(__half a, __half b) { return PAL_F(a) != PAL_F(b); }
static inline bool __hlt(__half a, __half b) { return PAL_F(a) < PAL_F(b); }
static inline bool __hle(__half a, __half b) { return PAL_F(a) <= PAL_F(b); }
static inline bool __hgt(__half a, __half b) { return PAL_F(a) > PAL_F(b); }
static inline bool __hge(__half a, __half b) { return PAL_F(a) >= PAL_F(b); }
static inline bool __hisnan(__half a) { return (a.__x & 0x7fffu) > 0x7c00u; }
static inline int __hisinf(__half a)
{ return (a.__x & 0x7fffu) == 0x7c00u ? ((a.__x & 0x8000u) ? -1 : 1) : 0; }
// The _nan forms of __hmax/__hmin, for __half and (shim_bf16.h, found when instantiated)
// __nv_bfloat16 and their pairs: NaN, the canonical 0x7fff of both, if either input is NaN
// (the plain ones return the other input).
template <class H> static inline H __pal_nan_or(H a, H b, H r)
{ if (__hisnan(a) || __hisnan(b)) r.__x = 0x7fffu; return r; }
template <class H> static inline H __hmax_nan(H a, H b) { return __pal_nan_or(a, b, __hmax(a, b)); }
template <class H> static inline H __hmin_nan(H a, H b) { return __pal_nan_or(a, b, __hmin(a, b)); }
template <class H2> static inline H2 __hmax2_nan(H2 a, H2 b)
{ return H2(__hmax_nan(a.x, b.x), __hmax_nan(a.y, b.y)); }
template <class H2> static inline H2 __hmin2_nan(H2 a, H2 b)
{ return H2(__hmin_nan(a.x, b.x), __hmin_nan(a.y, b.y)); }
static inline __half hexp(__half a) { return PAL_H(expf(PAL_F(a))); }
static inline __half hexp2(__half a) { return PAL_H(exp2f(PAL_F(a))); }
static inline __half hlog(__half a) { return PAL_H(logf(PAL_F(a))); }
static inline __half hsqrt(__half a) { return PAL_H(sqrtf(PAL_F(a))); }
static inline __half hrsqrt(__half a) { return PAL_H(1.0f / sqrtf(PAL_F(a))); }

#define PAL_H2(op)                                                                           \
    static inline __half2 op##2(__half2 a, __half2 b) { return __half2(op(a.x, b.x), op(a.y, b.y)); }
PAL_H2(__hadd) PAL_H2(__hsub) PAL_H2(__hmul) PAL_H2(__hmax) PAL_H2(__hmin)
#undef PAL_H2
static inline __half2 __h2div(__half2 a, __half2 b) { return __half2(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }
static inline __half2 __hneg2(__half2 a) { return __half2(__hneg(a.x), __hneg(a.y)); }
static inline __half2 __habs2(__half2 a) { return __half2(__habs(a.x), __habs(a.y)); }
static inline __half2 __hfma2(__half2 a, __half2 b, __half2 c)
{ return __half2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); }
static inline __half2 h2exp(__half2 a) { return __half2(hexp(a.x), hexp(a.y)); }

// The rest of cuda_fp16.h's math (in float, rounded once; the GPU's approximations may differ
// in the last bit), saturating forms (clamped to [0, 1], NaN to 0) and half2 comparisons.
#define PAL_H1(name, expr)                                                                   \
    static inline __half name(__half h) { const float x = PAL_F(h); return PAL_H(expr); }
PAL_H1(hrcp, 1.0f / x) PAL_H1(hceil, ceilf(x)) PAL_H1(hfloor, floorf(x)) PAL_H1(htrunc, truncf(x))
PAL_H1(hrint, rintf(x)) PAL_H1(hlog2, log2f(x)) PAL_H1(hlog10, log10f(x))
PAL_H1(hexp10, powf(10.0f, x)) PAL_H1(hsin, sinf(x)) PAL_H1(hcos, cosf(x))
#undef PAL_H1
#define PAL_H2_1(name, one)                                                                  \
    static inline __half2 name(__half2 a) { return __half2(one(a.x), one(a.y)); }
PAL_H2_1(h2sqrt, hsqrt) PAL_H2_1(h2rsqrt, hrsqrt) PAL_H2_1(h2rcp, hrcp) PAL_H2_1(h2log, hlog)
PAL_H2_1(h2log2, hlog2) PAL_H2_1(h2log10, hlog10) PAL_H2_1(h2exp2, hexp2)
PAL_H2_1(h2exp10, hexp10) PAL_H2_1(h2sin, hsin) PAL_H2_1(h2cos, hcos) PAL_H2_1(h2ceil, hceil)
PAL_H2_1(h2floor, hfloor) PAL_H2_1(h2trunc, htrunc) PAL_H2_1(h2rint, hrint)
#undef PAL_H2_1
static inline __half __pal_hsat(__half h)
{ const float x = PAL_F(h); return PAL_H(x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f)); }
static inline __half __hadd_sat(__half a, __half b) { return __pal_hsat(__hadd(a, b)); }
static inline __half __hsub_sat(__half a, __half b) { return __pal_hsat(__hsub(a, b)); }
static inline __half __hmul_sat(__half a, __half b) { return __pal_hsat(__hmul(a, b)); }
static inline __half __hfma_sat(__half a, __half b, __half c) { return __pal_hsat(__hfma(a, b, c)); }
static inline __half __hfma_relu(__half a, __half b, __half c)
{ const __half r = __hfma(a, b, c); return __hisnan(r) || !(r.__x & 0x8000u) ? r : __pal_hraw(0); }
static inline __half2 __lowhigh2highlow(__half2 a) { return __half2(a.y, a.x); }
static inline __half2 __hisnan2(__half2 a)
{ return __half2(PAL_H(__hisnan(a.x) ? 1.0f : 0.0f), PAL_H(__hisnan(a.y) ? 1.0f : 0.0f)); }
#define PAL_HCMP2(name, one)                                                                 \
    static inline __half2 __h##name##2(__half2 a, __half2 b)                                  \
    { return __half2(PAL_H(one(a.x, b.x) ? 1.0f : 0.0f), PAL_H(one(a.y, b.y) ? 1.0f : 0.0f)); } \
    static inline bool __hb##name##2(__half2 a, __half2 b) { return one(a.x, b.x) && one(a.y, b.y); }
PAL_HCMP2(eq, __heq) PAL_HCMP2(ne, __hne) PAL_HCMP2(lt, __hlt) PAL_HCMP2(le, __hle)
PAL_HCMP2(gt, __hgt) PAL_HCMP2(ge, __hge)
#undef PAL_HCMP2

// Operators, as cuda_fp16.hpp defines them for device code.
static inline __half operator+(const __half &a, const __half &b) { return __hadd(a, b); }
static inline __half operator-(const __half &a, const __half &b) { return __hsub(a, b); }
static inline __half operator*(const __half &a, const __half &b) { return __hmul(a, b); }
static inline __half operator/(const __half &a, const __half &b) { return __hdiv(a, b); }
static inline __half operator-(const __half &a) { return __hneg(a); }
static inline __half operator+(const __half &a) { return a; }
static inline __half &operator+=(__half &a, const __half &b) { a = __hadd(a, b); return a; }
static inline __half &operator-=(__half &a, const __half &b) { a = __hsub(a, b); return a; }
static inline __half &operator*=(__half &a, const __half &b) { a = __hmul(a, b); return a; }
static inline __half &operator/=(__half &a, const __half &b) { a = __hdiv(a, b); return a; }
static inline bool operator==(const __half &a, const __half &b) { return __heq(a, b); }
static inline bool operator!=(const __half &a, const __half &b) { return __hne(a, b); }
static inline bool operator<(const __half &a, const __half &b) { return __hlt(a, b); }
static inline bool operator<=(const __half &a, const __half &b) { return __hle(a, b); }
static inline bool operator>(const __half &a, const __half &b) { return __hgt(a, b); }
static inline bool operator>=(const __half &a, const __half &b) { return __hge(a, b); }
static inline __half2 operator+(const __half2 &a, const __half2 &b) { return __hadd2(a, b); }
static inline __half2 operator-(const __half2 &a, const __half2 &b) { return __hsub2(a, b); }
static inline __half2 operator*(const __half2 &a, const __half2 &b) { return __hmul2(a, b); }
static inline __half2 operator/(const __half2 &a, const __half2 &b) { return __h2div(a, b); }
static inline __half2 &operator+=(__half2 &a, const __half2 &b) { a = __hadd2(a, b); return a; }
static inline __half2 &operator*=(__half2 &a, const __half2 &b) { a = __hmul2(a, b); return a; }
#undef PAL_H
#undef PAL_F

#endif
