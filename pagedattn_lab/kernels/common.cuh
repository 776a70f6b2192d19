// What the decode kernels share: the cache's element type, 16-byte loads converted to float,
// the "minus infinity" constants of online softmax, and asynchronous global-to-shared copies.
//
// Compile-time choices come as NVRTC -D options (one source, instantiated per type and size):
//   -DKV_T=float | __half | __nv_bfloat16   the element type of q, the caches and out
//   -DKV_BF16                               set together with KV_T=__nv_bfloat16
#ifndef PAGEDATTN_LAB_COMMON_CUH
#define PAGEDATTN_LAB_COMMON_CUH

#include <cuda_fp16.h>
#ifdef KV_BF16
#include <cuda_bf16.h>
#endif

#ifndef KV_T
#define KV_T __half
#endif

#define NEG_INF __int_as_float(0xff800000)
// A finite "minus infinity" for running maxima: exp2f(NEG_BIG - NEG_BIG) is 1, never NaN.
#define NEG_BIG (-3.402823466e+38f)

// 2^x. On the GPU the bare MUFU.EX2 (ex2.approx.ftz): exp2f adds a range fix-up (a compare
// and two multiplies) for results below 2^-126, and a weight that small next to its row's
// largest (which is 1) changes nothing.
__device__ inline float fast_exp2(float x)
{
#ifdef __CUDA_ARCH__
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
}

// ---- element conversions ------------------------------------------------------------------

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__half x) { return __half2float(x); }
#ifdef KV_BF16
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
#endif

__device__ inline void store_value(float* p, float x) { *p = x; }
__device__ inline void store_value(__half* p, float x) { *p = __float2half(x); }
#ifdef KV_BF16
__device__ inline void store_value(__nv_bfloat16* p, float x) { *p = __float2bfloat16(x); }
#endif

// 16 bytes (4 floats or 8 halves), loaded raw and converted to float.
template <typename T>
__device__ inline void unpack_chunk(const uint4& raw, float* out)
{
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 16 / (int)sizeof(T); ++i) out[i] = to_float(e[i]);
}

// ---- asynchronous copies (cp.async, compute capability 8.0 and later) -------------------
// A 16-byte copy from global to shared memory that does not pass through registers, so a
// thread can have many in flight while it computes; copy_commit() closes a group of copies
// and copy_wait<N>() waits until at most N groups are still in flight. A copy that is not
// `valid` writes 16 zero bytes and reads nothing. The CPU executor runs no PTX: there the copy
// lands at the issuing thread's wait that covers its group (cpu/shim_async.h), the latest a
// GPU may land it, so a tile read before its wait and barrier shows.
// COPY_L1 (1: cp.async.ca, through L1; 0: .cg, L2 only): rows that are not whole 128-byte
// lines (head_dim 80, 96 at 2 bytes) share lines with the next KV head's rows, and the .cg path
// then asked the L2 for whole lines: 1.4x the sectors the data holds at head_dim 96, against
// 1.0x through L1 (benchmarks/NOTES.md "Lines and fused KV heads (session 7)").
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define ASYNC_COPY 1
#endif
#ifndef COPY_L1
#define COPY_L1 0
#endif

__device__ inline void copy16_async(void* dst, const void* src, bool valid)
{
#ifdef ASYNC_COPY
    unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
#if COPY_L1
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(s), "l"(src), "r"(valid ? 16 : 0));
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(s), "l"(src), "r"(valid ? 16 : 0));
#endif
#elif defined(__PAGEDATTN_LAB_CPU__)
    __pal_cp_async(dst, src, 16, valid);   // lands at the wait (cpu/shim_async.h)
#else
    *reinterpret_cast<uint4*>(dst) =
        valid ? *reinterpret_cast<const uint4*>(src) : make_uint4(0u, 0u, 0u, 0u);
#endif
}

__device__ inline void copy_commit()
{
#ifdef ASYNC_COPY
    asm volatile("cp.async.commit_group;\n" ::);
#elif defined(__PAGEDATTN_LAB_CPU__)
    __pal_cp_async_commit();
#endif
}

template <int N>
__device__ inline void copy_wait()
{
#ifdef ASYNC_COPY
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
#elif defined(__PAGEDATTN_LAB_CPU__)
    __pal_cp_async_wait(N);
#endif
}

// A load that skips the (non-coherent) L1 cache: for data other blocks of the same launch
// wrote, after __threadfence().
__device__ inline float load_cg(const float* p)
{
#ifdef __CUDA_ARCH__
    return __ldcg(p);
#else
    return *p;
#endif
}

__device__ inline float4 load_cg(const float4* p)
{
#ifdef __CUDA_ARCH__
    return __ldcg(p);
#else
    return *p;
#endif
}

#endif  // PAGEDATTN_LAB_COMMON_CUH
