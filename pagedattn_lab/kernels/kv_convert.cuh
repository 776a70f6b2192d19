// Reading compressed KV codes that were copied raw into shared memory (kernels/decode_tc.cu):
// 16 codes at a time to 16-bit floats, exactly (no scale), and a 4-byte asynchronous copy for
// per-token scales. Include after common.cuh and kv_quant.cuh (KV_T, KV_QUANT, ASYNC_COPY,
// store_value, dequantize_code); the CPU executor runs the integer forms.
#ifndef KV_CONVERT_CUH
#define KV_CONVERT_CUH

#if KV_QUANT
// A 4-byte asynchronous copy (cp.async.ca: .cg takes only 16 bytes), zeros when not valid.
__device__ inline void copy4_async(float* dst, const float* src, bool valid)
{
#ifdef ASYNC_COPY
    unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :: "r"(s), "l"(src), "r"(valid ? 4 : 0));
#elif defined(__PAGEDATTN_LAB_CPU__)
    __pal_cp_async(dst, src, 4, valid);   // lands at the wait (cpu/shim_async.h)
#else
    *dst = valid ? *src : 0.0f;
#endif
}

// 16 codes (one 16-byte chunk) to 16 KV_T values, exactly (no scale): every int8 and every
// e4m3 value is a 16-bit float. fp16, two at a time: int8 through the 1024 + x bit trick,
// e4m3 by moving its bits into place (x 2^8 for the exponent bias; NaN kept); sm_89+ has an
// instruction for it. bf16: one at a time through float.
#ifndef KV_BF16
__device__ inline __half2 codes2_to_half2(unsigned two)   // codes in the low 16 bits
{
#if KV_QUANT == 1
    const unsigned u = two ^ 0x8080u;   // x + 128, as unsigned bytes
    const unsigned bits = (u & 0xffu) | ((u & 0xff00u) << 8) | 0x64006400u;   // 1024 + x + 128
    return __hsub2(__halves2half2(__ushort_as_half((unsigned short)(bits & 0xffffu)),
                                  __ushort_as_half((unsigned short)(bits >> 16))),
                   __float2half2_rn(1152.0f));
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    unsigned r;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(r) : "h"((unsigned short)two));
    return __halves2half2(__ushort_as_half((unsigned short)(r & 0xffffu)),
                          __ushort_as_half((unsigned short)(r >> 16)));
#else
    const unsigned x = ((two & 0xffu) << 8) | ((two & 0xff00u) << 16);   // each code << 8
    unsigned bits = (x & 0x80008000u) | ((x >> 1) & 0x3f803f80u);       // sign, e, m
    if ((two & 0x7fu) == 0x7fu) bits |= 0x7fffu;                         // NaN stays NaN
    if ((two & 0x7f00u) == 0x7f00u) bits |= 0x7fff0000u;
    return __hmul2(__halves2half2(__ushort_as_half((unsigned short)(bits & 0xffffu)),
                                  __ushort_as_half((unsigned short)(bits >> 16))),
                   __float2half2_rn(256.0f));
#endif
}
#endif

__device__ inline void convert_chunk(KV_T* dst, const uint4& raw)
{
#ifndef KV_BF16
    __align__(16) __half2 h[8];
    const unsigned w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        h[2 * i] = codes2_to_half2(w[i] & 0xffffu);
        h[2 * i + 1] = codes2_to_half2(w[i] >> 16);
    }
    reinterpret_cast<uint4*>(dst)[0] = reinterpret_cast<const uint4*>(h)[0];
    reinterpret_cast<uint4*>(dst)[1] = reinterpret_cast<const uint4*>(h)[1];
#else
    const unsigned char* code = reinterpret_cast<const unsigned char*>(&raw);
#pragma unroll
    for (int j = 0; j < 16; ++j) store_value(dst + j, dequantize_code(code[j]));
#endif
}

#endif

#endif  // KV_CONVERT_CUH
