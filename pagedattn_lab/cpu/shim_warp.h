// The warp match and reduce intrinsics (sm_70 / sm_80), built from shuffles of the lanes in
// the mask: each is as many warp meetings as the mask has lanes (every lane named must reach
// it, as for a shuffle). CUDA's overload sets, so a call that is ambiguous there is here.
#ifndef PAGEDATTN_LAB_SHIM_WARP_H
#define PAGEDATTN_LAB_SHIM_WARP_H

// The lanes of the mask whose value has the same bits as the caller's (match compares bits:
// -0.0f and 0.0f differ, a NaN matches its own pattern).
PAL_DF unsigned __pal_match_bits(int line, unsigned mask, unsigned long long bits)
{
    unsigned same = 0;
    for (unsigned m = mask; m; m &= m - 1) {
        const int src = __builtin_ctz(m);
        if (__pal_warp_op(line, PAL_OP_MATCH, mask, bits, src, 32) == bits) same |= 1u << src;
    }
    return same;
}
template <class T> PAL_DF unsigned long long __pal_bits(T v)
{
    unsigned long long b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
// The macros below expand in the kernel's own text, so every name they bring in is one of the
// implementation's (__pal_*): a kernel's own `#define min(a, b)`, `any(...)` or `add(...)`
// must not expand them.
struct __pal_match_at {
    int line;
#define PAL_MATCH(T)                                                                         \
    unsigned __pal_any(unsigned mask, T v) const                                             \
    {                                                                                        \
        return __pal_match_bits(line, mask, __pal_bits(v));                                  \
    }                                                                                        \
    unsigned __pal_all(unsigned mask, T v, int *pred) const                                  \
    {                                                                                        \
        const bool same = __pal_any(mask, v) == mask;                                        \
        *pred = same;                                                                        \
        return same ? mask : 0u;                                                             \
    }
    PAL_MATCH(unsigned) PAL_MATCH(int) PAL_MATCH(unsigned long) PAL_MATCH(long)
    PAL_MATCH(unsigned long long) PAL_MATCH(long long) PAL_MATCH(float) PAL_MATCH(double)
#undef PAL_MATCH
};
#define __match_any_sync(...) (__pal_match_at{__LINE__}.__pal_any(__VA_ARGS__))
#define __match_all_sync(...) (__pal_match_at{__LINE__}.__pal_all(__VA_ARGS__))

// __reduce_*_sync: every lane of the mask gets the reduction of the mask's values.
template <class T, class F> PAL_DF T __pal_reduce(int line, unsigned mask, T v, F op)
{
    T acc = v;
    bool first = true;
    for (unsigned m = mask; m; m &= m - 1) {
        const T o = (T)__pal_warp_op(line, PAL_OP_REDUCE, mask, (unsigned)v, __builtin_ctz(m), 32);
        acc = first ? o : op(acc, o);
        first = false;
    }
    return acc;
}
struct __pal_reduce_at {
    int line;
    unsigned __pal_add(unsigned mask, unsigned v) const
    { return __pal_reduce(line, mask, v, [](unsigned a, unsigned b) { return a + b; }); }
    int __pal_add(unsigned mask, int v) const { return (int)__pal_add(mask, (unsigned)v); }
    unsigned __pal_min(unsigned mask, unsigned v) const
    { return __pal_reduce(line, mask, v, [](unsigned a, unsigned b) { return a < b ? a : b; }); }
    int __pal_min(unsigned mask, int v) const
    { return __pal_reduce(line, mask, v, [](int a, int b) { return a < b ? a : b; }); }
    unsigned __pal_max(unsigned mask, unsigned v) const
    { return __pal_reduce(line, mask, v, [](unsigned a, unsigned b) { return a > b ? a : b; }); }
    int __pal_max(unsigned mask, int v) const
    { return __pal_reduce(line, mask, v, [](int a, int b) { return a > b ? a : b; }); }
    unsigned __pal_and(unsigned mask, unsigned v) const
    { return __pal_reduce(line, mask, v, [](unsigned a, unsigned b) { return a & b; }); }
    unsigned __pal_or(unsigned mask, unsigned v) const
    { return __pal_reduce(line, mask, v, [](unsigned a, unsigned b) { return a | b; }); }
    unsigned __pal_xor(unsigned mask, unsigned v) const
    { return __pal_reduce(line, mask, v, [](unsigned a, unsigned b) { return a ^ b; }); }
};
#define __reduce_add_sync(...) (__pal_reduce_at{__LINE__}.__pal_add(__VA_ARGS__))
#define __reduce_min_sync(...) (__pal_reduce_at{__LINE__}.__pal_min(__VA_ARGS__))
#define __reduce_max_sync(...) (__pal_reduce_at{__LINE__}.__pal_max(__VA_ARGS__))
#define __reduce_and_sync(...) (__pal_reduce_at{__LINE__}.__pal_and(__VA_ARGS__))
#define __reduce_or_sync(...) (__pal_reduce_at{__LINE__}.__pal_or(__VA_ARGS__))
#define __reduce_xor_sync(...) (__pal_reduce_at{__LINE__}.__pal_xor(__VA_ARGS__))

#endif
