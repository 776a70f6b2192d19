// The CUDA shim of the CPU executor: included before every kernel source, which is then
// compiled, unmodified, by the system C++ compiler.
//
// Each CUDA thread is a fiber; the runtime (runtime.cpp) switches between the fibers of a
// block at __syncthreads() and at warp intrinsics. The built-in variables (threadIdx, ...)
// are globals that the runtime sets before resuming a fiber.
//
// Like NVRTC, this shim defines neither INFINITY nor NAN nor FLT_MAX: a kernel that uses
// them fails here as it fails on the GPU.
#ifndef PAGEDATTN_LAB_SHIM_H
#define PAGEDATTN_LAB_SHIM_H

#define PAGEDATTN_LAB_SHIM_VERSION 1
#define __PAGEDATTN_LAB_CPU__ 1
#define __CUDACC__ 1
#define __CUDACC_RTC__ 1

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "runtime.h"

#undef INFINITY
#undef NAN
#undef HUGE_VAL
#undef HUGE_VALF
#undef HUGE_VALL

// ---- CUDA keywords ----
#define __global__
#define __device__
#define __host__
// const: constant memory is read-only to kernel code (NVRTC refuses a write), and a const
// variable lies in read-only data, which the access counts leave out (device_data.py):
// a GPU reads it through the constant cache, not as global loads. A declaration that
// says const or constexpr itself has the keyword blanked (`const const` does not
// compile), and a pointer's moves behind its `*` (constant_decl.py).
#define __constant__ const
#define __managed__
#define __grid_constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __cluster_dims__(...)
#define __maxnreg__(n)
// Static shared memory: one copy per worker process, reused by the blocks it runs one
// after another. On ELF systems it lives in its own section so that the runtime can
// poison it before each block (shared memory starts as garbage on a GPU too).
// extern __shared__ declarations are rewritten by source.py (rewrite_extern_shared).
// `used`: Clang reads an array that the kernel never writes (a tile it forgot to load) as
// the zeros of its initial value, folded at compile time, where it must read the poison.
#ifdef __ELF__
#define __shared__ static __attribute__((section("pal_shared"), used))
// A guard of poisoned bytes that source.py (guard_static_shared) puts before each statement
// declaring static __shared__ variables, in their section: GCC lays a function's statics out
// in reverse order, Clang in order, so either way each such statement's arrays are followed
// by a guard (or by runtime.cpp's pal_shared_guard; two arrays of one statement are not kept
// apart). A read past it gives the poison, not the next array's values; a write past it is
// found after the block. Each guard's address goes into section pal_sguards, which the
// runtime walks (no code may run at load time to register it).
#define PAL_SGUARD_CAT(a, b) a##b
#define PAL_SGUARD_N(n)                                                                       \
    static char PAL_SGUARD_CAT(__pal_sguard_, n)[PAL_SHARED_GUARD]                            \
        __attribute__((section("pal_shared"), used));                                         \
    static char *PAL_SGUARD_CAT(__pal_sguard_at_, n)                                          \
        __attribute__((section("pal_sguards"), used)) = PAL_SGUARD_CAT(__pal_sguard_, n);
#define PAL_SGUARD PAL_SGUARD_N(__COUNTER__)
// A guard before the section's first array: Clang lays the translation unit's statics out in
// order, so this one comes first (GCC, in reverse order, puts source.py's at the unit's end
// first), and a read or write before the first array's start (`p[-1]`) meets poison, not the
// runtime's variables that precede the section. (Named, not counted: shim.h is precompiled.)
PAL_SGUARD_N(head)
#else
#define __shared__ static __attribute__((used))
#define PAL_SGUARD_N(n)
#define PAL_SGUARD
#endif
// What source.py (guard_static_shared) puts after a template function's statement declaring
// `__shared__` variable v: GCC drops the section attribute of a template's statics, so the
// section's poison misses v; the first of the block's threads to pass the declaration poisons
// it (a thread reaches v only past its declaration, but for a jump into its scope: `goto`,
// a `case` after it), once per block (runtime's __pal_spoison). (The cast: v may be volatile.)
#define PAL_SPOISON_N(v, n)                                                                   \
    static unsigned long long PAL_SGUARD_CAT(__pal_spoisoned_, n);                            \
    if (PAL_SGUARD_CAT(__pal_spoisoned_, n) != __pal_block_serial)                            \
        __pal_spoison((void *)__builtin_addressof(v), sizeof(v),                              \
                      &PAL_SGUARD_CAT(__pal_spoisoned_, n));
#define PAL_SPOISON(v) PAL_SPOISON_N(v, __COUNTER__)

#include "shim_types.h"  // also declares threadIdx, blockIdx, blockDim, gridDim
static constexpr int warpSize = 32;

#include "shim_half.h"
#include "shim_device.h"
#include "shim_int.h"
#include "shim_warp.h"
#include "shim_async.h"

// ---- printf (captured and printed by Python) and assert ----
#define printf(...) __pal_printf(__VA_ARGS__)
#include "include/assert.h"  // device assert(): fails the launch naming thread and block

// ---- the launch wrapper: calls a kernel with arguments given as void*[] (like CUDA) ----
template <int... I> struct __pal_seq {};
template <int N, int... I> struct __pal_mkseq : __pal_mkseq<N - 1, N - 1, I...> {};
template <int... I> struct __pal_mkseq<0, I...> { typedef __pal_seq<I...> type; };
template <class T> struct __pal_noref { typedef T type; };
template <class T> struct __pal_noref<T &> { typedef T type; };
template <class... A, int... I>
static inline void __pal_call(void (*f)(A...), void **a, __pal_seq<I...>)
{
    f(*reinterpret_cast<typename __pal_noref<A>::type *>(a[I])...);
}
template <class... A> static inline void __pal_invoke(void (*f)(A...), void **a)
{
    __pal_call(f, a, typename __pal_mkseq<(int)sizeof...(A)>::type());
}

#ifdef PAL_INSTRUMENTED
// The instrumented build sees loads and stores, not what the C library does: a kernel's
// memcpy (CUDA has it in device code), memmove and memset go through the hooks, which count
// them (tsan_hooks.cpp); so do the calls the compiler makes itself or an asm label names,
// which kernel_object.py renames to the hooks (whose names the table below puts in the
// object). Another library call is refused (library_calls.py).
extern "C" {
void *__tsan_memcpy(void *, const void *, unsigned long);
void *__tsan_memmove(void *, const void *, unsigned long);
void *__tsan_memset(void *, int, unsigned long);
}
__attribute__((used)) static void *const __pal_copy_hooks[] = {
    (void *)__tsan_memcpy, (void *)__tsan_memmove, (void *)__tsan_memset};
#define memcpy __tsan_memcpy
#define memmove __tsan_memmove
#define memset __tsan_memset
#define __builtin_memcpy __tsan_memcpy
#define __builtin_memmove __tsan_memmove
#define __builtin_memset __tsan_memset
#endif

#endif
