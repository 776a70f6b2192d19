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
struct __pal_match_at {
    int line;
#define PAL_MATCH(T)                                                                         \
    unsigned any(unsigned mask, T v) const { return __pal_match_bits(line, mask, __pal_bits(v)); } \
    unsigned all(unsigned mask, T v, int *pred) const                                       \
    {                                                                                        \
        const bool same = any(mask, v) == mask;                                              \
        *pred = same;                                                                        \
        return same ? mask : 0u;                                                             \
    }
    PAL_MATCH(unsigned) PAL_MATCH(int) PAL_MATCH(unsigned long) PAL_MATCH(long)
    PAL_MATCH(unsigned long long) PAL_MATCH(long long) PAL_MATCH(float) PAL_MATCH(double)
#undef PAL_MATCH
};
#define __match_any_sync(...) (__pal_match_at{__LINE__}.any(__VA_ARGS__))
#define __match_all_sync(...) (__pal_match_at{__LINE__}.all(__VA_ARGS__))

// __reduce_*_sync: every lane of the mask gets the reduction of the mask's values. The
// members are not named min and max: the macros expand in the kernel's text, where a
// kernel's own `#define min(a, b)` would expand them too.
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
    unsigned add(unsigned mask, unsigned v) const
    { return __pal_reduce(line, mask, v, [](unsigned a, unsigned b) { return a + b; }); }
    int add(unsigned mask, int v) const { return (int)add(mask, (unsigned)v); }
    unsigned lowest(unsigned mask, unsigned v) const
    { return __pal_reduce(line, mask, v, [](unsigned a, unsigned b) { return a < b ? a : b; }); }
    int lowest(unsigned mask, int v) const
    { return __pal_reduce(line, mask, v, [](int a, int b) { return a < b ? a : b; }); }
    unsigned highest(unsigned mask, unsigned v) const
    { return __pal_reduce(line, mask, v, [](unsigned a, unsigned b) { return a > b ? a : b; }); }
    int highest(unsigned mask, int v) const
    { return __pal_reduce(line, mask, v, [](int a, int b) { return a > b ? a : b; }); }
    unsigned band(unsigned mask, unsigned v) const
    { return __pal_reduce(line, mask, v, [](unsigned a, unsigned b) { return a & b; }); }
    unsigned bor(unsigned mask, unsigned v) const
    { return __pal_reduce(line, mask, v, [](unsigned a, unsigned b) { return a | b; }); }
    unsigned bxor(unsigned mask, unsigned v) const
    { return __pal_reduce(line, mask, v, [](unsigned a, unsigned b) { return a ^ b; }); }
};
#define __reduce_add_sync(...) (__pal_reduce_at{__LINE__}.add(__VA_ARGS__))
#define __reduce_min_sync(...) (__pal_reduce_at{__LINE__}.lowest(__VA_ARGS__))
#define __reduce_max_sync(...) (__pal_reduce_at{__LINE__}.highest(__VA_ARGS__))
#define __reduce_and_sync(...) (__pal_reduce_at{__LINE__}.band(__VA_ARGS__))
#define __reduce_or_sync(...) (__pal_reduce_at{__LINE__}.bor(__VA_ARGS__))
#define __reduce_xor_sync(...) (__pal_reduce_at{__LINE__}.bxor(__VA_ARGS__))

#endif
