// Device functions for the CPU executor: math, bit tricks, atomics, loads, warp intrinsics.
#ifndef PAGEDATTN_LAB_SHIM_DEVICE_H
#define PAGEDATTN_LAB_SHIM_DEVICE_H

#define PAL_DF static inline __attribute__((always_inline))

// ---- min / max: exactly CUDA's overload set (so ambiguous calls stay ambiguous) ----
#define PAL_MINMAX(R, A, B)                                                                  \
    PAL_DF R max(const A a, const B b) { return (R)a > (R)b ? (R)a : (R)b; }                 \
    PAL_DF R min(const A a, const B b) { return (R)a < (R)b ? (R)a : (R)b; }
PAL_MINMAX(int, int, int)
PAL_MINMAX(unsigned int, unsigned int, unsigned int)
PAL_MINMAX(unsigned int, int, unsigned int)
PAL_MINMAX(unsigned int, unsigned int, int)
PAL_MINMAX(long, long, long)
PAL_MINMAX(unsigned long, unsigned long, unsigned long)
PAL_MINMAX(unsigned long, long, unsigned long)
PAL_MINMAX(unsigned long, unsigned long, long)
PAL_MINMAX(long long, long long, long long)
PAL_MINMAX(unsigned long long, unsigned long long, unsigned long long)
PAL_MINMAX(unsigned long long, long long, unsigned long long)
PAL_MINMAX(unsigned long long, unsigned long long, long long)
#undef PAL_MINMAX
PAL_DF float max(const float a, const float b) { return fmaxf(a, b); }
PAL_DF float min(const float a, const float b) { return fminf(a, b); }
PAL_DF double max(const double a, const double b) { return fmax(a, b); }
PAL_DF double min(const double a, const double b) { return fmin(a, b); }
PAL_DF double max(const float a, const double b) { return fmax((double)a, b); }
PAL_DF double min(const float a, const double b) { return fmin((double)a, b); }
PAL_DF double max(const double a, const float b) { return fmax(a, (double)b); }
PAL_DF double min(const double a, const float b) { return fmin(a, (double)b); }
PAL_DF unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
PAL_DF unsigned umax(unsigned a, unsigned b) { return a > b ? a : b; }

// ---- fast-math and rounding variants: the plain functions (the GPU's are approximations) ----
// glibc declares these names itself: define ours under other names.
#define __expf __pal_expf
#define __exp10f __pal_exp10f
#define __logf __pal_logf
#define __log2f __pal_log2f
#define __log10f __pal_log10f
#define __powf __pal_powf
#define __sinf __pal_sinf
#define __cosf __pal_cosf
#define __tanf __pal_tanf
#define __sincosf __pal_sincosf
PAL_DF float __pal_expf(float x) { return expf(x); }
PAL_DF float __pal_exp10f(float x) { return powf(10.0f, x); }
PAL_DF float __pal_logf(float x) { return logf(x); }
PAL_DF float __pal_log2f(float x) { return log2f(x); }
PAL_DF float __pal_log10f(float x) { return log10f(x); }
PAL_DF float __pal_powf(float x, float y) { return powf(x, y); }
PAL_DF float __pal_sinf(float x) { return sinf(x); }
PAL_DF float __pal_cosf(float x) { return cosf(x); }
PAL_DF float __pal_tanf(float x) { return tanf(x); }
PAL_DF void __pal_sincosf(float x, float *s, float *c) { *s = sinf(x); *c = cosf(x); }
// The GPU's __fdividef multiplies by an approximate reciprocal that flushes to zero: for
// 2^126 < |b| < 2^128 it gives a signed 0 (NaN for an infinite or NaN a), as CUDA documents.
PAL_DF float __fdividef(float a, float b)
{
    const float m = fabsf(b);
    return m > 0x1p126f && m < __builtin_inff() ? a * copysignf(0.0f, b) : a / b;
}
PAL_DF float fdividef(float a, float b) { return a / b; }
PAL_DF float rsqrtf(float x) { return 1.0f / sqrtf(x); }
PAL_DF double rsqrt(double x) { return 1.0 / sqrt(x); }
PAL_DF float rcbrtf(float x) { return 1.0f / cbrtf(x); }
PAL_DF float __saturatef(float x) { return x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }
PAL_DF float __fadd_rn(float a, float b) { return a + b; }
PAL_DF float __fsub_rn(float a, float b) { return a - b; }
PAL_DF float __fmul_rn(float a, float b) { return a * b; }
PAL_DF float __fdiv_rn(float a, float b) { return a / b; }
PAL_DF float __frcp_rn(float a) { return 1.0f / a; }
PAL_DF float __fsqrt_rn(float a) { return sqrtf(a); }
PAL_DF float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
PAL_DF double __dadd_rn(double a, double b) { return a + b; }
PAL_DF double __dmul_rn(double a, double b) { return a * b; }
PAL_DF double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
// PTX's float-to-integer conversions (cvt.rni / rzi / rmi / rpi): NaN gives 0 and values past
// the integer's range saturate, where a C cast is undefined (x86 gives INT_MIN for NaN, so a
// kernel that leaves NaN to the conversion would read as wrong here and right on the GPU);
// pal_saturate_int is in shim_half.h, whose conversions come first
PAL_DF unsigned pal_saturate_uint(double r)
{
    return r != r || r <= 0.0 ? 0u : r >= 4294967295.0 ? 4294967295u : (unsigned)r;
}
// CuPy compiles every kernel with -ftz=true: float operations, these conversions and
// shim_int.h's rounding-mode arithmetic included, read and write a subnormal as a signed 0
// (on an H100: __float2int_rd(-1e-40f) is 0). (The CPU's own float arithmetic does not.)
PAL_DF float pal_ftz(float x) { return fabsf(x) < 0x1p-126f ? copysignf(0.0f, x) : x; }
PAL_DF int __float2int_rn(float x) { return pal_saturate_int(rintf(pal_ftz(x))); }
PAL_DF int __float2int_rz(float x) { return pal_saturate_int(truncf(pal_ftz(x))); }
PAL_DF int __float2int_rd(float x) { return pal_saturate_int(floorf(pal_ftz(x))); }
PAL_DF int __float2int_ru(float x) { return pal_saturate_int(ceilf(pal_ftz(x))); }
PAL_DF unsigned __float2uint_rn(float x) { return pal_saturate_uint(rintf(pal_ftz(x))); }
PAL_DF float __int2float_rn(int x) { return (float)x; }
PAL_DF float __uint2float_rn(unsigned x) { return (float)x; }
// a double's NaN becomes 0x80000000 (on an H100), a float's 0 (pal_saturate_int's)
PAL_DF int pal_double_to_int(double r)
{ return r != r ? -2147483647 - 1 : pal_saturate_int(r); }
PAL_DF unsigned pal_double_to_uint(double r)
{ return r != r ? 0x80000000u : pal_saturate_uint(r); }
PAL_DF int __double2int_rn(double x) { return pal_double_to_int(rint(x)); }
PAL_DF float __double2float_rn(double x) { return (float)x; }

// ---- reinterpretation ----
PAL_DF float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
PAL_DF int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
PAL_DF float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
PAL_DF unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
PAL_DF double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
PAL_DF long long __double_as_longlong(double d) { long long i; memcpy(&i, &d, 8); return i; }

// ---- integer intrinsics ----
PAL_DF int __popc(unsigned x) { return __builtin_popcount(x); }
PAL_DF int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
PAL_DF int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
PAL_DF int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
PAL_DF int __ffs(int x) { return __builtin_ffs(x); }
PAL_DF int __ffsll(long long x) { return __builtin_ffsll(x); }
PAL_DF unsigned __brev(unsigned x)
{
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
PAL_DF int __mul24(int a, int b) { return (int)((long long)((a << 8) >> 8) * ((b << 8) >> 8)); }
PAL_DF unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
PAL_DF int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
PAL_DF unsigned __umulhi(unsigned a, unsigned b)
{ return (unsigned)(((unsigned long long)a * b) >> 32); }
PAL_DF unsigned __byte_perm(unsigned x, unsigned y, unsigned s)
{
    unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}

// ---- loads with cache hints: plain loads here ----
template <class T> PAL_DF T __ldg(const T *p) { return *p; }
template <class T> PAL_DF T __ldcg(const T *p) { return *p; }
template <class T> PAL_DF T __ldca(const T *p) { return *p; }
template <class T> PAL_DF T __ldcs(const T *p) { return *p; }
template <class T> PAL_DF T __ldlu(const T *p) { return *p; }
template <class T> PAL_DF T __ldcv(const T *p) { return *p; }
template <class T> PAL_DF void __stcg(T *p, T v) { *p = v; }
template <class T> PAL_DF void __stcs(T *p, T v) { *p = v; }
template <class T> PAL_DF void __stwb(T *p, T v) { *p = v; }
template <class T> PAL_DF void __stwt(T *p, T v) { *p = v; }

// ---- atomics: real atomics (blocks of one launch may run in parallel processes) ----
// In an instrumented build (access counts, race check) each atomic reports itself once.
#ifdef PAL_INSTRUMENTED
#define PAL_NOTE_ATOMIC(a) ::__pal_note_atomic((a), sizeof(*(a)))   // (no ADL: see below)
#else
#define PAL_NOTE_ATOMIC(a) ((void)0)
#endif
#define PAL_SC __ATOMIC_SEQ_CST
// CUDA's overload sets exactly (an atomicAdd on long long or an atomicSub on unsigned long
// long does not compile there, so it must not here): add, bitwise and exchange on int,
// unsigned and unsigned long long; sub on int and unsigned; min and max on long long too.
#define PAL_ATOMIC_RMW(T, NAME, BUILTIN)                                                     \
    PAL_DF T NAME(T *a, T v) { PAL_NOTE_ATOMIC(a); return BUILTIN(a, v, PAL_SC); }
#define PAL_ATOMIC_INT(T)                                                                    \
    PAL_ATOMIC_RMW(T, atomicAdd, __atomic_fetch_add)                                         \
    PAL_ATOMIC_RMW(T, atomicAnd, __atomic_fetch_and)                                         \
    PAL_ATOMIC_RMW(T, atomicOr, __atomic_fetch_or)                                           \
    PAL_ATOMIC_RMW(T, atomicXor, __atomic_fetch_xor)                                         \
    PAL_ATOMIC_RMW(T, atomicExch, __atomic_exchange_n)                                       \
    PAL_DF T atomicCAS(T *a, T cmp, T v)                                                     \
    {                                                                                        \
        PAL_NOTE_ATOMIC(a);                                                                  \
        __atomic_compare_exchange_n(a, &cmp, v, false, PAL_SC, PAL_SC);                      \
        return cmp;                                                                          \
    }
#define PAL_ATOMIC_MINMAX(T)                                                                 \
    PAL_DF T atomicMax(T *a, T v)                                                            \
    {                                                                                        \
        PAL_NOTE_ATOMIC(a);                                                                  \
        T old = __atomic_load_n(a, PAL_SC);                                                  \
        while (old < v && !__atomic_compare_exchange_n(a, &old, v, true, PAL_SC, PAL_SC)) {} \
        return old;                                                                          \
    }                                                                                        \
    PAL_DF T atomicMin(T *a, T v)                                                            \
    {                                                                                        \
        PAL_NOTE_ATOMIC(a);                                                                  \
        T old = __atomic_load_n(a, PAL_SC);                                                  \
        while (old > v && !__atomic_compare_exchange_n(a, &old, v, true, PAL_SC, PAL_SC)) {} \
        return old;                                                                          \
    }
PAL_ATOMIC_INT(int)
PAL_ATOMIC_INT(unsigned int)
PAL_ATOMIC_INT(unsigned long long)
PAL_ATOMIC_RMW(int, atomicSub, __atomic_fetch_sub)
PAL_ATOMIC_RMW(unsigned int, atomicSub, __atomic_fetch_sub)
PAL_ATOMIC_MINMAX(int)
PAL_ATOMIC_MINMAX(unsigned int)
PAL_ATOMIC_MINMAX(unsigned long long)
PAL_ATOMIC_MINMAX(long long)
#undef PAL_ATOMIC_INT
#undef PAL_ATOMIC_RMW
#undef PAL_ATOMIC_MINMAX

// Floating-point atomics: a compare-and-swap loop on the bit pattern.
#define PAL_ATOMIC_FP(T, U, NAME, EXPR)                                                      \
    PAL_DF T NAME(T *a, T v)                                                                 \
    {                                                                                        \
        PAL_NOTE_ATOMIC(a);                                                                  \
        U *p = (U *)a;                                                                       \
        U old = __atomic_load_n(p, PAL_SC), nw;                                              \
        T o;                                                                                 \
        do {                                                                                 \
            memcpy(&o, &old, sizeof(T));                                                     \
            T n = EXPR;                                                                      \
            memcpy(&nw, &n, sizeof(T));                                                      \
        } while (!__atomic_compare_exchange_n(p, &old, nw, true, PAL_SC, PAL_SC));           \
        return o;                                                                            \
    }
PAL_ATOMIC_FP(float, unsigned int, atomicAdd, o + v)
PAL_ATOMIC_FP(double, unsigned long long, atomicAdd, o + v)
PAL_ATOMIC_FP(__half2, unsigned int, atomicAdd, __hadd2(o, v))
#undef PAL_ATOMIC_FP

// The same loop for the atomics of a header a kernel includes after its own first lines
// (<cuda_bf16.h>): its text is read after the kernel's macros, which could change it (a
// `#define sizeof(x) 0` made its note count nothing), and it is scanned for the compiler's
// atomics like the kernel's own lines (cpu/builtins.py). Here, before the kernel, the note
// and the atomics are out of the macros' reach (and the note is called by its qualified name:
// an overload the kernel declares is not found by argument lookup when the template is
// instantiated, nor is one of memcpy); `next` maps the old value to the new one.
template <class U, class T, class F> PAL_DF T __pal_atomic_update(T *a, F next)
{
    PAL_NOTE_ATOMIC(a);
    U *p = (U *)a;
    U old = __atomic_load_n(p, PAL_SC), nw;
    T o;
    do {
        ::memcpy(&o, &old, sizeof(T));
        T n = next(o);
        ::memcpy(&nw, &n, sizeof(T));
    } while (!__atomic_compare_exchange_n(p, &old, nw, true, PAL_SC, PAL_SC));
    return o;
}

// sm_70+ has a 16-bit atomicAdd on __half (cuda_fp16.h): the same loop on its bits
PAL_DF __half atomicAdd(__half *a, __half v)
{ return __pal_atomic_update<unsigned short>(a, [v](__half o) { return __hadd(o, v); }); }

PAL_DF float atomicExch(float *a, float v)
{
    PAL_NOTE_ATOMIC(a);
    unsigned u = __atomic_exchange_n((unsigned *)a, __float_as_uint(v), PAL_SC);
    return __uint_as_float(u);
}
PAL_DF unsigned short atomicCAS(unsigned short *a, unsigned short cmp, unsigned short v)
{
    PAL_NOTE_ATOMIC(a);
    __atomic_compare_exchange_n(a, &cmp, v, false, PAL_SC, PAL_SC);
    return cmp;
}
PAL_DF unsigned atomicInc(unsigned *a, unsigned limit)
{
    PAL_NOTE_ATOMIC(a);
    unsigned old = __atomic_load_n(a, PAL_SC);
    while (!__atomic_compare_exchange_n(a, &old, old >= limit ? 0u : old + 1u, true, PAL_SC,
                                        PAL_SC)) {}
    return old;
}
PAL_DF unsigned atomicDec(unsigned *a, unsigned limit)
{
    PAL_NOTE_ATOMIC(a);
    unsigned old = __atomic_load_n(a, PAL_SC);
    while (!__atomic_compare_exchange_n(a, &old, (old == 0u || old > limit) ? limit : old - 1u,
                                        true, PAL_SC, PAL_SC)) {}
    return old;
}
#undef PAL_SC
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd
#define atomicCAS_block atomicCAS
#define atomicExch_block atomicExch
#define atomicMax_block atomicMax
#define atomicMin_block atomicMin
PAL_DF void __threadfence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
PAL_DF void __threadfence_block(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
PAL_DF void __threadfence_system(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// The calling thread's index in its block (x fastest, as CUDA numbers lanes and warps).
PAL_DF int __pal_thread_linear()
{ return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)); }

// ---- warp intrinsics: every lane named in the mask must arrive (checked) ----
// CUDA's shuffles are overloads for the arithmetic types, __half(2) and __nv_bfloat16(2) only:
// a float2, a struct or a pointer does not compile there, so it must not here either.
template <class T> struct __pal_shfl_type { static const bool ok = !__is_class(T); };
template <class T> struct __pal_shfl_type<T *> { static const bool ok = false; };
template <> struct __pal_shfl_type<__half> { static const bool ok = true; };
template <> struct __pal_shfl_type<__half2> { static const bool ok = true; };
template <class T>
PAL_DF T __pal_shfl(int line, int op, unsigned mask, T var, int arg, int width = 32)
{
    static_assert(__pal_shfl_type<T>::ok, "CUDA's __shfl_*_sync take an int, unsigned, long "
                  "long, float, double, __half, __half2, __nv_bfloat16 or __nv_bfloat162 "
                  "(not a vector type, struct or pointer): shuffle it member by member");
    static_assert(sizeof(T) <= 8, "warp shuffles move values of at most 8 bytes");
    unsigned long long raw = 0;
    memcpy(&raw, &var, sizeof(T));
    raw = __pal_warp_op(line, op, mask, raw, arg, width);
    T r;
    memcpy(&r, &raw, sizeof(T));
    return r;
}
#define __shfl_sync(...) __pal_shfl(__LINE__, PAL_OP_SHFL, __VA_ARGS__)
#define __shfl_up_sync(...) __pal_shfl(__LINE__, PAL_OP_SHFL_UP, __VA_ARGS__)
#define __shfl_down_sync(...) __pal_shfl(__LINE__, PAL_OP_SHFL_DOWN, __VA_ARGS__)
#define __shfl_xor_sync(...) __pal_shfl(__LINE__, PAL_OP_SHFL_XOR, __VA_ARGS__)
#define __ballot_sync(mask, pred)                                                            \
    ((unsigned)__pal_warp_op(__LINE__, PAL_OP_BALLOT, (mask), (pred) ? 1 : 0, 0, 32))
#define __any_sync(mask, pred) ((int)__pal_warp_op(__LINE__, PAL_OP_ANY, (mask), (pred) ? 1 : 0, 0, 32))
#define __all_sync(mask, pred) ((int)__pal_warp_op(__LINE__, PAL_OP_ALL, (mask), (pred) ? 1 : 0, 0, 32))
struct __pal_syncwarp_at {
    int line;
    void operator()(unsigned mask = 0xffffffffu) const
    { __pal_warp_op(line, PAL_OP_SYNCWARP, mask, 0, 0, 32); }
};
#define __syncwarp(...) (__pal_syncwarp_at{__LINE__}(__VA_ARGS__))
#define __activemask() __pal_activemask()
#define __syncthreads() __pal_syncthreads(__LINE__)
#define __syncthreads_count(p) __pal_syncthreads_reduce(__LINE__, (p) ? 1 : 0, 0)
#define __syncthreads_and(p) __pal_syncthreads_reduce(__LINE__, (p) ? 1 : 0, 1)
#define __syncthreads_or(p) __pal_syncthreads_reduce(__LINE__, (p) ? 1 : 0, 2)
#define __trap() __pal_trap(__LINE__)
#define __brkpt() ((void)0)
#define __nanosleep(ns) __pal_yield()
PAL_DF long long clock64(void) { return __pal_clock64(); }

#endif
