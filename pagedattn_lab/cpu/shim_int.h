// CUDA's integer intrinsics and rounding-mode conversions and arithmetic beyond shim_device.h's
// (which this file follows): before, a name CUDA has and the shim lacked failed to compile
// here, though NVRTC takes it. Each gives CUDA's documented result bit for bit, saturating
// conversions included, and subnormals and NaN as an H100 gave them (tests/test_cpu_hunt88.py).
#ifndef PAGEDATTN_LAB_SHIM_INT_H
#define PAGEDATTN_LAB_SHIM_INT_H

// ---- integer averages, sums of absolute differences, funnel shifts, 64-bit high products ----
// CUDA's __hadd(int, int) is an average: without this overload an int pair became two
// __half and was added (__hadd(7, 8) gave 15, the GPU 7).
PAL_DF int __hadd(int a, int b) { return (int)(((long long)a + b) >> 1); }
PAL_DF int __rhadd(int a, int b) { return (int)(((long long)a + b + 1) >> 1); }
PAL_DF unsigned __uhadd(unsigned a, unsigned b)
{ return (unsigned)(((unsigned long long)a + b) >> 1); }
PAL_DF unsigned __urhadd(unsigned a, unsigned b)
{ return (unsigned)(((unsigned long long)a + b + 1) >> 1); }
PAL_DF unsigned __sad(int a, int b, unsigned c)
{ return (a > b ? (unsigned)a - (unsigned)b : (unsigned)b - (unsigned)a) + c; }
PAL_DF unsigned __usad(unsigned a, unsigned b, unsigned c) { return (a > b ? a - b : b - a) + c; }
PAL_DF long long __mul64hi(long long a, long long b)
{ return (long long)(((__int128)a * b) >> 64); }
PAL_DF unsigned long long __umul64hi(unsigned long long a, unsigned long long b)
{ return (unsigned long long)(((unsigned __int128)a * b) >> 64); }
PAL_DF unsigned long long __brevll(unsigned long long x)
{ return ((unsigned long long)__brev((unsigned)x) << 32) | __brev((unsigned)(x >> 32)); }
// hi:lo shifted by shift % 32 (_l, _r) or by min(shift, 32) (_lc, _rc: "clamped")
PAL_DF unsigned long long __pal_funnel(unsigned lo, unsigned hi)
{ return ((unsigned long long)hi << 32) | lo; }
PAL_DF unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned s)
{ return (unsigned)((__pal_funnel(lo, hi) << (s & 31)) >> 32); }
PAL_DF unsigned __funnelshift_lc(unsigned lo, unsigned hi, unsigned s)
{ return (unsigned)((__pal_funnel(lo, hi) << (s < 32 ? s : 32)) >> 32); }
PAL_DF unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s)
{ return (unsigned)(__pal_funnel(lo, hi) >> (s & 31)); }
PAL_DF unsigned __funnelshift_rc(unsigned lo, unsigned hi, unsigned s)
{ return (unsigned)(__pal_funnel(lo, hi) >> (s < 32 ? s : 32)); }

// ---- dot products of packed bytes (dp4a): four products summed into c, as on sm_61+ ----
PAL_DF int __dp4a(int a, int b, int c)
{
    for (int i = 0; i < 32; i += 8) c += (int)(signed char)(a >> i) * (int)(signed char)(b >> i);
    return c;
}
PAL_DF unsigned __dp4a(unsigned a, unsigned b, unsigned c)
{
    for (int i = 0; i < 32; i += 8) c += ((a >> i) & 0xffu) * ((b >> i) & 0xffu);
    return c;
}

// ---- float/double to integer in the four rounding modes: saturating ----
// NaN (on an H100): 0x8000000000000000 for a 64-bit result, 0x80000000 for a 32-bit one from
// a double (shim_device.h's pal_double_to_int and _to_uint), 0 for a 32-bit one from a float
PAL_DF long long pal_saturate_ll(double r)
{
    return r != r ? -0x7fffffffffffffffLL - 1 : r >= 9223372036854775808.0 ? 0x7fffffffffffffffLL
                      : r < -9223372036854775808.0 ? -0x7fffffffffffffffLL - 1 : (long long)r;
}
PAL_DF unsigned long long pal_saturate_ull(double r)
{
    return r != r ? 1ull << 63 : r <= 0.0 ? 0ull : r >= 18446744073709551616.0 ? ~0ull
                                                                   : (unsigned long long)r;
}
#define PAL_TO_INT(SUF, ROUND)                                                               \
    PAL_DF unsigned __float2uint_##SUF(float x)                                              \
    { return pal_saturate_uint(ROUND((double)pal_ftz(x))); }                                 \
    PAL_DF long long __float2ll_##SUF(float x)                                               \
    { return pal_saturate_ll(ROUND((double)pal_ftz(x))); }                                   \
    PAL_DF unsigned long long __float2ull_##SUF(float x)                                     \
    { return pal_saturate_ull(ROUND((double)pal_ftz(x))); }                                  \
    PAL_DF int __double2int_##SUF(double x) { return pal_double_to_int(ROUND(x)); }          \
    PAL_DF unsigned __double2uint_##SUF(double x) { return pal_double_to_uint(ROUND(x)); }   \
    PAL_DF long long __double2ll_##SUF(double x) { return pal_saturate_ll(ROUND(x)); }       \
    PAL_DF unsigned long long __double2ull_##SUF(double x) { return pal_saturate_ull(ROUND(x)); }
PAL_TO_INT(rz, trunc)
PAL_TO_INT(rd, floor)
PAL_TO_INT(ru, ceil)
#undef PAL_TO_INT
PAL_DF long long __float2ll_rn(float x) { return pal_saturate_ll(rint((double)pal_ftz(x))); }
PAL_DF unsigned long long __float2ull_rn(float x)
{ return pal_saturate_ull(rint((double)pal_ftz(x))); }
PAL_DF unsigned __double2uint_rn(double x) { return pal_double_to_uint(rint(x)); }
PAL_DF long long __double2ll_rn(double x) { return pal_saturate_ll(rint(x)); }
PAL_DF unsigned long long __double2ull_rn(double x) { return pal_saturate_ull(rint(x)); }

// ---- directed rounding: the nearest result r, moved one step when the exact value lies
// past it (err: the sign of exact - r; an overflow to infinity of finite inputs lies beyond) ----
enum { PAL_RZ, PAL_RD, PAL_RU };
PAL_DF float pal_next(float r, float toward) { return nextafterf(r, toward); }
PAL_DF double pal_next(double r, double toward) { return nextafter(r, toward); }
template <class T> PAL_DF T pal_round_dir(T r, int err, int mode)   // float or double
{
    if (err == 0 || r != r) return r;
    const T inf = (T)__builtin_inf();
    if (mode == PAL_RD) return err < 0 ? pal_next(r, -inf) : r;
    if (mode == PAL_RU) return err > 0 ? pal_next(r, inf) : r;
    return (err < 0) == (r > 0) ? pal_next(r, (T)0) : r;
}
PAL_DF int pal_sign(double d) { return (d > 0) - (d < 0); }
// the sign of exact - r where r is the nearest float to an exact value e (given as a double
// that holds it exactly, or as e_hi + e_lo); an overflow of finite inputs counts as beyond
PAL_DF int pal_err_sign(float r, double e_hi, double e_lo, bool finite)
{
    if (__builtin_isinf(r)) return !finite ? 0 : r > 0 ? -1 : 1;
    return pal_sign((e_hi - (double)r) + e_lo);
}
PAL_DF bool pal_fin(float a) { return __builtin_isfinite(a); }
// TwoSum: s + lo == a + b exactly (doubles, no overflow)
PAL_DF double pal_two_sum(double a, double b, double *lo)
{
    const double s = a + b, bv = s - a, av = s - bv;
    *lo = (a - av) + (b - bv);
    return s;
}
// An exact zero sum x + y (s == 0: a double sum of floats, or of a float and a float product,
// rounds to 0 only when exactly 0): IEEE 754 makes it -0 when rounding down unless both are
// +0, and otherwise +0 unless both are -0, which the nearest sum r already is.
PAL_DF float pal_zero_sum(float r, double x, double y, int mode)
{ return mode == PAL_RD && (x != 0.0 || y != 0.0 || signbit(x) || signbit(y)) ? -0.0f : r; }
PAL_DF float pal_fadd(float a, float b, int mode)
{
    double lo;
    const double s = pal_two_sum(a, b, &lo);
    if (s == 0.0) return pal_zero_sum(a + b, a, b, mode);
    return pal_round_dir(a + b, pal_err_sign(a + b, s, lo, pal_fin(a) && pal_fin(b)), mode);
}
PAL_DF float pal_fmul(float a, float b, int mode)   // a * b is exact in double
{
    const float r = a * b;
    return pal_round_dir(r, pal_err_sign(r, (double)a * b, 0.0, pal_fin(a) && pal_fin(b)), mode);
}
PAL_DF float pal_fdiv(float a, float b, int mode)
{
    const float r = a / b;
    if (!pal_fin(r) || !pal_fin(b) || a == 0.0f) {   // exact, or an overflow of finite inputs
        const bool finite = pal_fin(a) && b != 0.0f;
        return pal_round_dir(r, __builtin_isinf(r) ? pal_err_sign(r, 0.0, 0.0, finite) : 0, mode);
    }
    // a - r b is exact in double (r b is): its sign and b's say which side the quotient lies
    return pal_round_dir(r, pal_sign((double)a - (double)r * b) * pal_sign(b), mode);
}
PAL_DF float pal_fsqrt(float a, int mode)
{ const float r = sqrtf(a); return pal_round_dir(r, pal_sign((double)a - (double)r * r), mode); }
PAL_DF float pal_fma(float a, float b, float c, int mode)
{
    double lo;
    const double s = pal_two_sum((double)a * b, c, &lo);   // a * b exact in double
    const float r = fmaf(a, b, c);
    if (s == 0.0) return pal_zero_sum(r, (double)a * b, c, mode);
    return pal_round_dir(r, pal_err_sign(r, s, lo, pal_fin(a) && pal_fin(b) && pal_fin(c)), mode);
}
// Subnormal inputs and results are a signed zero, as under CuPy's -ftz=true (shim_device.h;
// on an H100: __fadd_rz(1e-40f, -3.0f) is -3.0f, __fmul_ru(1e-40f, -3.0f) -0.0f).
#define PAL_FDIR(SUF, MODE)                                                                  \
    PAL_DF float __fadd_##SUF(float a, float b)                                              \
    { return pal_ftz(pal_fadd(pal_ftz(a), pal_ftz(b), MODE)); }                              \
    PAL_DF float __fsub_##SUF(float a, float b)                                              \
    { return pal_ftz(pal_fadd(pal_ftz(a), -pal_ftz(b), MODE)); }                             \
    PAL_DF float __fmul_##SUF(float a, float b)                                              \
    { return pal_ftz(pal_fmul(pal_ftz(a), pal_ftz(b), MODE)); }                              \
    PAL_DF float __fdiv_##SUF(float a, float b)                                              \
    { return pal_ftz(pal_fdiv(pal_ftz(a), pal_ftz(b), MODE)); }                              \
    PAL_DF float __frcp_##SUF(float a) { return pal_ftz(pal_fdiv(1.0f, pal_ftz(a), MODE)); } \
    PAL_DF float __fsqrt_##SUF(float a) { return pal_ftz(pal_fsqrt(pal_ftz(a), MODE)); }     \
    PAL_DF float __fmaf_##SUF(float a, float b, float c)                                     \
    { return pal_ftz(pal_fma(pal_ftz(a), pal_ftz(b), pal_ftz(c), MODE)); }
PAL_FDIR(rz, PAL_RZ)
PAL_FDIR(rd, PAL_RD)
PAL_FDIR(ru, PAL_RU)
#undef PAL_FDIR

// ---- integers and doubles to float, and int64 to double, in each rounding mode ----
// The nearest float (the compiler's conversion), compared exactly with the value.
template <class T> PAL_DF T pal_i128_to(__int128 v, int mode)   // float or double
{
    const T r = (T)v;
    const __int128 back = (__int128)r;   // exact: |r| <= 2^64
    return pal_round_dir(r, v > back ? 1 : v < back ? -1 : 0, mode);
}
PAL_DF float pal_double_to_float(double d, int mode)   // flushed like the arithmetic above
{
    const float r = (float)d;
    return pal_ftz(pal_round_dir(r, pal_err_sign(r, d, 0.0, __builtin_isfinite(d)), mode));
}
#define PAL_CONV(SUF, MODE)                                                                  \
    PAL_DF float __int2float_##SUF(int x) { return pal_i128_to<float>(x, MODE); }             \
    PAL_DF float __uint2float_##SUF(unsigned x) { return pal_i128_to<float>(x, MODE); }       \
    PAL_DF float __ll2float_##SUF(long long x) { return pal_i128_to<float>(x, MODE); }        \
    PAL_DF float __ull2float_##SUF(unsigned long long x) { return pal_i128_to<float>(x, MODE); } \
    PAL_DF double __ll2double_##SUF(long long x) { return pal_i128_to<double>(x, MODE); }     \
    PAL_DF double __ull2double_##SUF(unsigned long long x) { return pal_i128_to<double>(x, MODE); } \
    PAL_DF float __double2float_##SUF(double x) { return pal_double_to_float(x, MODE); }
PAL_CONV(rz, PAL_RZ)
PAL_CONV(rd, PAL_RD)
PAL_CONV(ru, PAL_RU)
#undef PAL_CONV
PAL_DF float __ll2float_rn(long long x) { return (float)x; }
PAL_DF float __ull2float_rn(unsigned long long x) { return (float)x; }
PAL_DF double __ll2double_rn(long long x) { return (double)x; }
PAL_DF double __ull2double_rn(unsigned long long x) { return (double)x; }
PAL_DF double __int2double_rn(int x) { return (double)x; }
// 1/sqrt(x) to float through double: the double is within about 2^-52 of it, so only a value
// that close to a midpoint between two floats could round apart from the GPU's (not checked)
PAL_DF float __frsqrt_rn(float x) { return (float)(1.0 / sqrt((double)x)); }
PAL_DF double __dsub_rn(double a, double b) { return a - b; }
PAL_DF double __ddiv_rn(double a, double b) { return a / b; }
PAL_DF double __drcp_rn(double a) { return 1.0 / a; }
PAL_DF double __dsqrt_rn(double a) { return sqrt(a); }
PAL_DF double __uint2double_rn(unsigned x) { return (double)x; }

#endif
