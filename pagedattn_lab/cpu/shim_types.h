// CUDA's built-in vector types (float2, uint4, ...), dim3, their make_* functions, and the
// built-in variables threadIdx/blockIdx/blockDim/gridDim (defined in runtime.cpp).
//
// Layouts match CUDA (same sizes and member order). Alignment matches CUDA for types of up
// to 8 bytes; the 16-byte types (float4, int4, uint4, double2, ...) are only aligned to
// their element here, because the executor places buffers end-aligned against a guard page
// (so that an access one past the end faults), and a 16-byte-aligned type would let the
// compiler emit aligned SSE loads that fault on such addresses.
// A struct holding one would then be laid out otherwise than on the GPU, so the grader
// refuses that (grading/source_layout.py).
#ifndef PAGEDATTN_LAB_SHIM_TYPES_H
#define PAGEDATTN_LAB_SHIM_TYPES_H

#include "runtime.h"  // PAL_HIDDEN

#define PAL_VEC1(T, N, A)                                                                    \
    struct __attribute__((aligned(A))) N##1 { T x; };                                       \
    static inline N##1 make_##N##1(T x) { N##1 r; r.x = x; return r; }
#define PAL_VEC2(T, N, A)                                                                    \
    struct __attribute__((aligned(A))) N##2 { T x, y; };                                    \
    static inline N##2 make_##N##2(T x, T y) { N##2 r; r.x = x; r.y = y; return r; }
#define PAL_VEC3(T, N)                                                                       \
    struct N##3 { T x, y, z; };                                                              \
    static inline N##3 make_##N##3(T x, T y, T z) { N##3 r; r.x = x; r.y = y; r.z = z; return r; }
#define PAL_VEC4(T, N, A)                                                                    \
    struct __attribute__((aligned(A))) N##4 { T x, y, z, w; };                              \
    static inline N##4 make_##N##4(T x, T y, T z, T w)                                       \
    { N##4 r; r.x = x; r.y = y; r.z = z; r.w = w; return r; }

#define PAL_VEC_ALL(T, N, A2, A4)                                                            \
    PAL_VEC1(T, N, sizeof(T)) PAL_VEC2(T, N, A2) PAL_VEC3(T, N) PAL_VEC4(T, N, A4)

PAL_VEC_ALL(signed char, char, 2, 4)
PAL_VEC_ALL(unsigned char, uchar, 2, 4)
PAL_VEC_ALL(short, short, 4, 8)
PAL_VEC_ALL(unsigned short, ushort, 4, 8)
PAL_VEC_ALL(int, int, 8, 4)
PAL_VEC_ALL(unsigned int, uint, 8, 4)
PAL_VEC_ALL(long long, longlong, 8, 8)
PAL_VEC_ALL(unsigned long long, ulonglong, 8, 8)
PAL_VEC_ALL(float, float, 8, 4)
PAL_VEC_ALL(double, double, 8, 8)

#undef PAL_VEC1
#undef PAL_VEC2
#undef PAL_VEC3
#undef PAL_VEC4
#undef PAL_VEC_ALL

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

// The built-in variables, set by the runtime for the fiber that runs. gridDim and blockDim
// are const but in the runtime's files that define or compare them (PAL_SETS_DIMS): NVRTC refuses `gridDim.x = 1`
// ("expression must be a modifiable lvalue"), and so does the kernel's build. They hold for
// a whole launch, so a load the compiler keeps across a barrier is right. threadIdx and
// blockIdx change at each switch of fibers, so their objects are not const (a const
// object's load may be kept across the call that switches): the runtime writes
// __pal_thread_idx and __pal_block_idx, and kernel code reads them through a reference to
// const, which refuses `threadIdx.x = 0` as NVRTC does and reloads after every call.
#ifdef PAL_SETS_DIMS
#define PAL_DIMS_CONST
#else
#define PAL_DIMS_CONST const
#endif
extern "C" {
PAL_HIDDEN extern uint3 __pal_thread_idx;
PAL_HIDDEN extern uint3 __pal_block_idx;
PAL_HIDDEN extern PAL_DIMS_CONST dim3 blockDim;
PAL_HIDDEN extern PAL_DIMS_CONST dim3 gridDim;
}
static const uint3 &threadIdx = __pal_thread_idx, &blockIdx = __pal_block_idx;

#endif
