// __nv_bfloat16 / __nv_bfloat162 (cuda_bf16.h) for the CPU executor, included by
// include/cuda_bf16.h (so a kernel must #include <cuda_bf16.h>, as under NVRTC).
//
// bfloat16 is the top half of a float32: the same exponent range, 8 significant bits.
// float -> bf16 rounds to nearest even, bit-exactly as the GPU's cvt.rn.bf16.f32 and
// ml_dtypes.bfloat16 (NaN becomes the canonical 0x7fff, like CUDA). Arithmetic is done in
// float and rounded once: exact for * (a product of two bf16 fits a float) and for + and -
// unless the operands' exponents differ by more than 16 (then a double rounding may differ
// from the GPU's in the last bit).
#ifndef PAGEDATTN_LAB_SHIM_BF16_H
#define PAGEDATTN_LAB_SHIM_BF16_H

static inline unsigned short __pal_float_to_bf16_bits(float f)
{
    unsigned int x = __pal_f2u(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;         // NaN -> canonical NaN
    return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);   // nearest even
}
static inline float __pal_bf16_bits_to_float(unsigned short b)
{ return __pal_u2f((unsigned)b << 16); }

struct __nv_bfloat16_raw { unsigned short x; };
struct __nv_bfloat162_raw { unsigned short x, y; };

struct __attribute__((aligned(2))) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(const __nv_bfloat16_raw &r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(__pal_float_to_bf16_bits(f)) {}
    __nv_bfloat16(double d) : __x(__pal_float_to_bf16_bits(__pal_double_to_float_odd(d))) {}
    __nv_bfloat16(int i) : __x(__pal_float_to_bf16_bits(__pal_double_to_float_odd(i))) {}
    __nv_bfloat16(unsigned int i) : __x(__pal_float_to_bf16_bits(__pal_double_to_float_odd(i))) {}
    __nv_bfloat16(long long i) : __x(__pal_float_to_bf16_bits(__pal_double_to_float_odd((double)i))) {}
    __nv_bfloat16(short i) : __x(__pal_float_to_bf16_bits((float)i)) {}
    __nv_bfloat16(unsigned short i) : __x(__pal_float_to_bf16_bits((float)i)) {}
    operator float() const { return __pal_bf16_bits_to_float(__x); }
    operator __nv_bfloat16_raw() const { __nv_bfloat16_raw r; r.x = __x; return r; }
    __nv_bfloat16 &operator=(const __nv_bfloat16_raw &r) { __x = r.x; return *this; }
};
typedef __nv_bfloat16 nv_bfloat16;

struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
    __nv_bfloat162() = default;
    __nv_bfloat162(const __nv_bfloat16 &a, const __nv_bfloat16 &b) : x(a), y(b) {}
    __nv_bfloat162(const __nv_bfloat162_raw &r) { x.__x = r.x; y.__x = r.y; }
    operator __nv_bfloat162_raw() const
    { __nv_bfloat162_raw r; r.x = x.__x; r.y = y.__x; return r; }
};
typedef __nv_bfloat162 nv_bfloat162;

static inline __nv_bfloat16 __pal_bfraw(unsigned short b) { __nv_bfloat16 h; h.__x = b; return h; }

// ---- conversions ----
typedef __nv_bfloat16 __pal_bf;
typedef __nv_bfloat162 __pal_bf2;
static inline __pal_bf __float2bfloat16(float a) { return __pal_bfraw(__pal_float_to_bf16_bits(a)); }
static inline __pal_bf __float2bfloat16_rn(float a) { return __float2bfloat16(a); }
static inline __pal_bf __float2bfloat16_rz(float a)
{
    unsigned int x = __pal_f2u(a);
    return __pal_bfraw((x & 0x7fffffffu) > 0x7f800000u ? 0x7fffu : (unsigned short)(x >> 16));
}
static inline float __bfloat162float(__pal_bf a) { return __pal_bf16_bits_to_float(a.__x); }
static inline __pal_bf __double2bfloat16(double a) { return __float2bfloat16(__pal_double_to_float_odd(a)); }
static inline __pal_bf __int2bfloat16_rn(int i) { return __float2bfloat16(__pal_double_to_float_odd(i)); }
static inline int __bfloat162int_rz(__pal_bf h) { return (int)__bfloat162float(h); }
static inline int __bfloat162int_rn(__pal_bf h) { return (int)rintf(__bfloat162float(h)); }
static inline __pal_bf2 __float2bfloat162_rn(float a)
{ __pal_bf h = __float2bfloat16(a); return __pal_bf2(h, h); }
static inline __pal_bf2 __floats2bfloat162_rn(float a, float b)
{ return __pal_bf2(__float2bfloat16(a), __float2bfloat16(b)); }
static inline __pal_bf2 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
static inline float2 __bfloat1622float2(__pal_bf2 h)
{ return make_float2(__bfloat162float(h.x), __bfloat162float(h.y)); }
static inline float __low2float(__pal_bf2 h) { return __bfloat162float(h.x); }
static inline float __high2float(__pal_bf2 h) { return __bfloat162float(h.y); }
static inline __pal_bf __low2bfloat16(__pal_bf2 h) { return h.x; }
static inline __pal_bf __high2bfloat16(__pal_bf2 h) { return h.y; }
static inline __pal_bf2 __halves2bfloat162(__pal_bf lo, __pal_bf hi) { return __pal_bf2(lo, hi); }
static inline __pal_bf2 __bfloat162bfloat162(__pal_bf a) { return __pal_bf2(a, a); }
static inline __pal_bf2 make_bfloat162(__pal_bf x, __pal_bf y) { return __pal_bf2(x, y); }
static inline unsigned short __bfloat16_as_ushort(__pal_bf h) { return h.__x; }
static inline short __bfloat16_as_short(__pal_bf h) { return (short)h.__x; }
static inline __pal_bf __ushort_as_bfloat16(unsigned short u) { return __pal_bfraw(u); }
static inline __pal_bf __short_as_bfloat16(short s) { return __pal_bfraw((unsigned short)s); }

// ---- arithmetic: the same overloaded names as for __half ----
#define PAL_B(f) __float2bfloat16(f)
#define PAL_F(h) __bfloat162float(h)
static inline __pal_bf __hadd(__pal_bf a, __pal_bf b) { return PAL_B(PAL_F(a) + PAL_F(b)); }
static inline __pal_bf __hsub(__pal_bf a, __pal_bf b) { return PAL_B(PAL_F(a) - PAL_F(b)); }
static inline __pal_bf __hmul(__pal_bf a, __pal_bf b) { return PAL_B(PAL_F(a) * PAL_F(b)); }
static inline __pal_bf __hdiv(__pal_bf a, __pal_bf b) { return PAL_B(PAL_F(a) / PAL_F(b)); }
static inline __pal_bf __hneg(__pal_bf a) { return __pal_bfraw((unsigned short)(a.__x ^ 0x8000u)); }
static inline __pal_bf __habs(__pal_bf a) { return __pal_bfraw((unsigned short)(a.__x & 0x7fffu)); }
static inline __pal_bf __hfma(__pal_bf a, __pal_bf b, __pal_bf c)   // (a * b is exact in double)
{ return PAL_B(__pal_double_to_float_odd((double)PAL_F(a) * PAL_F(b) + PAL_F(c))); }
static inline __pal_bf __hmax(__pal_bf a, __pal_bf b) { return PAL_B(fmaxf(PAL_F(a), PAL_F(b))); }
static inline __pal_bf __hmin(__pal_bf a, __pal_bf b) { return PAL_B(fminf(PAL_F(a), PAL_F(b))); }
static inline bool __heq(__pal_bf a, __pal_bf b) { return PAL_F(a) == PAL_F(b); }
static inline bool __hne(__pal_bf a, __pal_bf b) { return PAL_F(a) != PAL_F(b); }
static inline bool __hlt(__pal_bf a, __pal_bf b) { return PAL_F(a) < PAL_F(b); }
static inline bool __hle(__pal_bf a, __pal_bf b) { return PAL_F(a) <= PAL_F(b); }
static inline bool __hgt(__pal_bf a, __pal_bf b) { return PAL_F(a) > PAL_F(b); }
static inline bool __hge(__pal_bf a, __pal_bf b) { return PAL_F(a) >= PAL_F(b); }
static inline bool __hisnan(__pal_bf a) { return (a.__x & 0x7fffu) > 0x7f80u; }
static inline int __hisinf(__pal_bf a)
{ return (a.__x & 0x7fffu) == 0x7f80u ? ((a.__x & 0x8000u) ? -1 : 1) : 0; }
static inline __pal_bf hexp(__pal_bf a) { return PAL_B(expf(PAL_F(a))); }
static inline __pal_bf hexp2(__pal_bf a) { return PAL_B(exp2f(PAL_F(a))); }
static inline __pal_bf hlog(__pal_bf a) { return PAL_B(logf(PAL_F(a))); }
static inline __pal_bf hsqrt(__pal_bf a) { return PAL_B(sqrtf(PAL_F(a))); }
static inline __pal_bf hrsqrt(__pal_bf a) { return PAL_B(1.0f / sqrtf(PAL_F(a))); }

#define PAL_B2(op)                                                                           \
    static inline __pal_bf2 op##2(__pal_bf2 a, __pal_bf2 b)                                  \
    { return __pal_bf2(op(a.x, b.x), op(a.y, b.y)); }
PAL_B2(__hadd) PAL_B2(__hsub) PAL_B2(__hmul) PAL_B2(__hmax) PAL_B2(__hmin)
#undef PAL_B2
static inline __pal_bf2 __h2div(__pal_bf2 a, __pal_bf2 b)
{ return __pal_bf2(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }
static inline __pal_bf2 __hneg2(__pal_bf2 a) { return __pal_bf2(__hneg(a.x), __hneg(a.y)); }
static inline __pal_bf2 __habs2(__pal_bf2 a) { return __pal_bf2(__habs(a.x), __habs(a.y)); }
static inline __pal_bf2 __hfma2(__pal_bf2 a, __pal_bf2 b, __pal_bf2 c)
{ return __pal_bf2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); }

static inline __pal_bf operator+(const __pal_bf &a, const __pal_bf &b) { return __hadd(a, b); }
static inline __pal_bf operator-(const __pal_bf &a, const __pal_bf &b) { return __hsub(a, b); }
static inline __pal_bf operator*(const __pal_bf &a, const __pal_bf &b) { return __hmul(a, b); }
static inline __pal_bf operator/(const __pal_bf &a, const __pal_bf &b) { return __hdiv(a, b); }
static inline __pal_bf operator-(const __pal_bf &a) { return __hneg(a); }
static inline __pal_bf operator+(const __pal_bf &a) { return a; }
static inline __pal_bf &operator+=(__pal_bf &a, const __pal_bf &b) { a = __hadd(a, b); return a; }
static inline __pal_bf &operator-=(__pal_bf &a, const __pal_bf &b) { a = __hsub(a, b); return a; }
static inline __pal_bf &operator*=(__pal_bf &a, const __pal_bf &b) { a = __hmul(a, b); return a; }
static inline __pal_bf &operator/=(__pal_bf &a, const __pal_bf &b) { a = __hdiv(a, b); return a; }
static inline bool operator==(const __pal_bf &a, const __pal_bf &b) { return __heq(a, b); }
static inline bool operator!=(const __pal_bf &a, const __pal_bf &b) { return __hne(a, b); }
static inline bool operator<(const __pal_bf &a, const __pal_bf &b) { return __hlt(a, b); }
static inline bool operator<=(const __pal_bf &a, const __pal_bf &b) { return __hle(a, b); }
static inline bool operator>(const __pal_bf &a, const __pal_bf &b) { return __hgt(a, b); }
static inline bool operator>=(const __pal_bf &a, const __pal_bf &b) { return __hge(a, b); }
static inline __pal_bf2 operator+(const __pal_bf2 &a, const __pal_bf2 &b) { return __hadd2(a, b); }
static inline __pal_bf2 operator-(const __pal_bf2 &a, const __pal_bf2 &b) { return __hsub2(a, b); }
static inline __pal_bf2 operator*(const __pal_bf2 &a, const __pal_bf2 &b) { return __hmul2(a, b); }
static inline __pal_bf2 &operator+=(__pal_bf2 &a, const __pal_bf2 &b) { a = __hadd2(a, b); return a; }
#undef PAL_B
#undef PAL_F

template <> struct __pal_shfl_type<__pal_bf> { static const bool ok = true; };   // (shuffles)
template <> struct __pal_shfl_type<__pal_bf2> { static const bool ok = true; };
// ---- atomics (sm_80+): a compare-and-swap loop on the bits (shim_device.h) ----
static inline __pal_bf2 atomicAdd(__pal_bf2 *a, __pal_bf2 v)
{
    return __pal_atomic_update<unsigned>(a, [v](__pal_bf2 o) { return __hadd2(o, v); });
}
static inline __pal_bf atomicAdd(__pal_bf *a, __pal_bf v)
{
    return __pal_atomic_update<unsigned short>(a, [v](__pal_bf o) { return __hadd(o, v); });
}

#endif
