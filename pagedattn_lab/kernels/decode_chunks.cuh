// paged_decode's (decode.cu) chunks of a K/V row: how a token's threads share them, their
// type and their unpacking to floats. Include after the -D defaults of decode.cu.
#ifndef DECODE_CHUNKS_CUH
#define DECODE_CHUNKS_CUH

constexpr int VEC = CHUNK_BYTES / (int)sizeof(CACHE_T);  // cache elements per chunk (load)
constexpr int QVEC = 16 / (int)sizeof(KV_T);            // q elements per 16-byte load
constexpr int CHUNKS = HEAD_DIM / VEC;                   // chunks in one K row of a head
constexpr int CPT = (CHUNKS + 31) / 32;                  // chunks per thread
constexpr int TG = CHUNKS <= CPT ? 1 : CHUNKS <= 2 * CPT ? 2 : CHUNKS <= 4 * CPT ? 4
                 : CHUNKS <= 8 * CPT ? 8 : CHUNKS <= 16 * CPT ? 16 : 32;   // threads per token
static_assert(HEAD_DIM % VEC == 0, "head_dim must be a whole number of 16-byte chunks");
static_assert(VEC % QVEC == 0, "a cache element is never wider than a q element");
static_assert(KV_QUANT == 0 || sizeof(CACHE_T) == 1, "codes are bytes");
static_assert(CHUNK_BYTES == 16 || (CHUNK_BYTES == 8 && KV_QUANT), "8-byte loads: codes only");
#if CHUNK_BYTES == 16
typedef uint4 chunk_t;
__device__ inline chunk_t zero_chunk() { return make_uint4(0u, 0u, 0u, 0u); }
#else
typedef uint2 chunk_t;
__device__ inline chunk_t zero_chunk() { return make_uint2(0u, 0u); }
#endif

// e4m3 codes go through the GPU's own conversion where it has one (cvt.rn.f16x2.e4m3x2, sm_89
// and later: two codes per instruction, exact; H200, D64 MHA: 0.342 against 0.370 ms for the
// integer path); the CPU executor and older GPUs (or -DFP8_CVT=0) take the integer path.
#ifndef FP8_CVT
#define FP8_CVT 1
#endif
#if KV_QUANT == 2 && FP8_CVT && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define FP8_HW_CVT 1
#endif

// What one unit of an unpacked value is worth, before the scale: e4m3 codes unpack to
// fp16 numbers 2^8 times smaller (see unpack_cache); the factor joins the scales.
#if KV_QUANT == 2 && !defined(FP8_HW_CVT) && !HALF2_MATH
#define CODE_UNIT 256.0f
#else
#define CODE_UNIT 1.0f
#endif

// A chunk of cache as VEC floats: KV_T values, or codes without their scale (times
// 1 / CODE_UNIT). Integer tricks of two or three operations per code stand in for
// int-to-float conversions (which NVIDIA's tables rate at a fraction of integer and float
// arithmetic); e4m3 takes the GPU's two-codes-per-instruction conversion where it has one:
//   int8:  byte ^ 0x80 is code + 128; placed in the low mantissa bits of 2^23 it gives the
//          float 2^23 + 128 + code, exactly, and one subtraction leaves the code.
//   e4m3:  the sign moved to bit 15 and the other 7 bits to bits 13..7 are the fp16 number
//          code / 2^8 (fp16's exponent bias is 15, e4m3's 7), subnormals included, exactly;
//          two codes at a time. The NaN code 0x7f reads as 480 here (as NaN through the GPU's
//          conversion; the cache write stores it only for a NaN input, and a sequence's
//          unused tail slots are never read).
__device__ inline void unpack_cache(const chunk_t& raw, float* out)
{
#if KV_QUANT == 0
    unpack_chunk<CACHE_T>(raw, out);
#else
    const unsigned* words = reinterpret_cast<const unsigned*>(&raw);
#pragma unroll
    for (int j = 0; j < CHUNK_BYTES / 4; ++j) {
#if KV_QUANT == 1
        const unsigned biased = words[j] ^ 0x80808080u;
#pragma unroll
        for (int i = 0; i < 4; ++i)   // bytes [code_i + 128, 0, 0, 0x4b]
            out[4 * j + i] = __uint_as_float(__byte_perm(biased, 0x4b000000u, 0x7440u | i))
                             - 8388736.0f;
#else
#pragma unroll
        for (int p = 0; p < 2; ++p) {   // bytes [0, code_2p, 0, code_2p+1]
#ifdef FP8_HW_CVT
            unsigned bits;
            const unsigned short pair = (unsigned short)(words[j] >> (16 * p));
            asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(bits) : "h"(pair));
#else
            const unsigned x = __byte_perm(words[j], 0u, p ? 0x3424u : 0x1404u);
            const unsigned bits = (x & 0x80008000u) | ((x >> 1) & 0x3f803f80u);
#endif
            const __half* h = reinterpret_cast<const __half*>(&bits);
            out[4 * j + 2 * p] = __half2float(h[0]);
            out[4 * j + 2 * p + 1] = __half2float(h[1]);
        }
#endif
    }
#endif
}

#endif  // DECODE_CHUNKS_CUH
