// Tensor-core instructions at the PTX level: mma.sync m16n8k16 (and m16n8k32 over 8-bit codes),
// ldmatrix, movmatrix, and the packing of two floats into one register of two 16-bit values.
//
// Why PTX and not WMMA: a WMMA fragment's element-to-lane mapping is unspecified, so a
// kernel cannot do per-row work (the online softmax's row maxima and sums) on accumulators
// in registers, nor reuse them as an A operand: it must store them to shared memory and load
// them back. With mma.sync the PTX ISA fixes where every element lives (below), so the
// scores S = Q K^T stay in registers, the softmax runs on them, and P = exp(S - m) is packed
// straight into the A registers of P V, as FlashAttention-2 and FlashInfer do.
//
// On the GPU (#ifndef __PAGEDATTN_LAB_CPU__) each function is one inline-asm instruction
// (sm_80 and later). On the CPU executor the same calls run a warp-collective emulation with
// the same layouts (pagedattn_lab/cpu/shim_mma_ptx.h), so a kernel written with them is tested
// on machines without a GPU. Results match the GPU's exactly, except that a tensor core sums
// the 16 products in its own order and precision (the CPU adds them to C in k order, in
// float), so a sum that is not exact may differ by float32 rounding errors.
//
// Every lane of the warp must reach each call (all 32, converged): they are warp-collective.
// The CPU executor reports a lane that does not as a WarpSyncError, like a shuffle whose mask
// names a lane that exited. Include this header from the kernel's .cu file: pagedattn_lab.
// kernels inlines the local headers that a .cu includes (not those included by a header).
//
// ---- Notation --------------------------------------------------------------------------
// lane = threadIdx.x % 32, g = lane >> 2 (the "group", 0..7), t = lane & 3 (0..3).
// A 32-bit register holds two 16-bit values (__half or __nv_bfloat16 bits): the lower column
// (or lower k) in its LOW 16 bits. "X[r][c0, c1]" means X[r][c0] (low) and X[r][c1] (high).
//
// ---- mma_m16n8k16: D = A * B + C ---------------------------------------------------------
// A is 16x16 (m x k, row-major), B is 16x8 (k x n, "col": each register holds two k of one
// column), C and D are 16x8 floats. Per lane:
//   a[0]: A[g][2t, 2t+1]      a[1]: A[g+8][2t, 2t+1]
//   a[2]: A[g][2t+8, 2t+9]    a[3]: A[g+8][2t+8, 2t+9]
//   b[0]: B[2t, 2t+1][g]      b[1]: B[2t+8, 2t+9][g]
//   c[0], c[1]: C[g][2t], C[g][2t+1]      c[2], c[3]: C[g+8][2t], C[g+8][2t+1]   (d alike)
// So lane 4g + t holds rows g and g+8 of the accumulator, columns 2t and 2t+1: the four
// lanes of a group own two whole rows, and a row reduction is two __shfl_xor_sync (1, 2).
// The accumulators of two n8 tiles (columns 0-7: s, 8-15: u) hold a 16x16 block in exactly
// the A layout, so P = exp(S - m) becomes the next mma's A without leaving registers:
//   a[0] = pack2(s[0], s[1])   a[1] = pack2(s[2], s[3])   a[2] = pack2(u[0], u[1])
//   a[3] = pack2(u[2], u[3])
// d may be the same array as c.
//
// ---- mma_m16n8k32_e4m3, mma_m16n8k32_s8: D = A * B + C over 8-bit values -------------------
// A is 16x32 (m x k, row-major), B is 32x8 (k x n, "col"); a register holds FOUR 8-bit values
// (fp8 e4m3 bits, or int8), the lowest k in its lowest byte. Per lane:
//   a[0]: A[g][4t .. 4t+3]        a[1]: A[g+8][4t .. 4t+3]
//   a[2]: A[g][4t+16 .. 4t+19]    a[3]: A[g+8][4t+16 .. 4t+19]
//   b[0]: B[4t .. 4t+3][g]        b[1]: B[4t+16 .. 4t+19][g]
//   c, d: as m16n8k16's (float for e4m3, int for s8: exact integer sums)
// So a lane's 16-byte row of codes (16 consecutive k of one row of A) is four A registers as
// they are: no conversion. e4m3 needs sm_89 or later; on sm_90 (Hopper has fp8 only in wgmma)
// ptxas emits it as conversions of A and B to f16 and two HMMA.16816 (checked with cuobjdump),
// s8 is one IMMA.16832 from sm_80 on.
//
// ---- ldmatrix: four (or one, two) 8x8 matrices of 16-bit values from shared memory -------
// `row` is THIS lane's row address in __shared__ memory: 16 bytes (8 values), 16-byte
// aligned. Lanes 0-7 give the 8 rows of matrix 0, lanes 8-15 of matrix 1, 16-23 of matrix 2,
// 24-31 of matrix 3 (x1 uses lanes 0-7's addresses, x2 lanes 0-15's; the other lanes'
// addresses are ignored, but every lane must call). Matrix i lands in r[i]:
//   non-trans: r[i] = M_i[g][2t, 2t+1]   (A from a row-major m x k tile; B from a row-major
//              n x k tile, e.g. K[key][dim] for Q K^T: b[0] from K's dims 0-7, b[1] 8-15)
//   trans:     r[i] = M_i[2t][g] (low), M_i[2t+1][g] (high)   (B from a row-major k x n
//              tile, e.g. V[key][dim] for P V: b[0] from keys 0-7, b[1] from keys 8-15)
// Example: A (16x16, row-major in shared, `lda` values per row) for mma's a[0..3]:
//   ldmatrix_x4(a, &A_s[(lane % 16) * lda + (lane / 16) * 8]);
// matrices 0..3 = rows 0-7/cols 0-7, rows 8-15/cols 0-7, rows 0-7/cols 8-15, rows 8-15/cols
// 8-15: exactly a[0], a[1], a[2], a[3] above. The 8 rows of one matrix are read together:
// rows whose 16 bytes fall in the same banks (a row stride that is a multiple of 128 bytes)
// conflict, up to 8-way; pad or swizzle the rows.
//
// ---- movmatrix_trans: an 8x8 matrix of 16-bit values transposed in registers -------------
// movmatrix.sync.aligned.m8n8.trans.b16 (sm_75 and later). Lane 4g + t brings x = M[g][2t, 2t+1]
// (the layout of an accumulator pair packed with pack2, or of ldmatrix's non-trans result)
// and gets M[2t][g] (low), M[2t+1][g] (high): the same layout of M^T. Used to turn the packed
// accumulator of C = A B (rows: m) into the B operand of a next mma whose k is C's m.
//
// ---- pack2_half, pack2_bf16 ----------------------------------------------------------------
// Two floats to one register of two 16-bit values, each rounded to nearest even: lo -> low
// 16 bits. pack2_half(s0, s1) packs the accumulator pair c[0], c[1] into an A register.
#ifndef PAGEDATTN_LAB_MMA_PTX_CUH
#define PAGEDATTN_LAB_MMA_PTX_CUH

#ifndef __PAGEDATTN_LAB_CPU__

// The shared-memory address (32-bit, what ldmatrix's [addr] wants) of a generic pointer.
#define MMA_PTX_SMEM(p) static_cast<unsigned>(__cvta_generic_to_shared(p))

// volatile: the compiler must neither drop nor move these warp-collective instructions (into
// a branch, past a barrier). No "memory" clobber, as in CUTLASS and FlashInfer: the shared
// stores that ldmatrix reads are ordered before it by the __syncthreads() or __syncwarp()
// the kernel needs anyway for other threads' stores.
__device__ inline void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2],
                                    const float c[4])
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

__device__ inline void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2],
                                         const float c[4])
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

__device__ inline void mma_m16n8k32_e4m3(float d[4], const unsigned a[4], const unsigned b[2],
                                         const float c[4])
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

__device__ inline void mma_m16n8k32_s8(int d[4], const unsigned a[4], const unsigned b[2],
                                       const int c[4])
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]));
}

__device__ inline void ldmatrix_x1(unsigned r[1], const void* row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(MMA_PTX_SMEM(row)));
}

__device__ inline void ldmatrix_x2(unsigned r[2], const void* row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(MMA_PTX_SMEM(row)));
}

__device__ inline void ldmatrix_x4(unsigned r[4], const void* row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(MMA_PTX_SMEM(row)));
}

__device__ inline void ldmatrix_x1_trans(unsigned r[1], const void* row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(MMA_PTX_SMEM(row)));
}

__device__ inline void ldmatrix_x2_trans(unsigned r[2], const void* row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(MMA_PTX_SMEM(row)));
}

__device__ inline void ldmatrix_x4_trans(unsigned r[4], const void* row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(MMA_PTX_SMEM(row)));
}

#undef MMA_PTX_SMEM

__device__ inline unsigned movmatrix_trans(unsigned x)
{
    unsigned r;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(r) : "r"(x));
    return r;
}

// cvt.rn.f16x2.f32 d, a, b puts a in the HIGH half and b in the low half.
__device__ inline unsigned pack2_half(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ inline unsigned pack2_bf16(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

#else  // the CPU executor: the same layouts, emulated (pagedattn_lab/cpu/shim_mma_ptx.h)

#include <pagedattn_lab_mma_ptx.h>

// `line` (the caller's line, filled in by the compiler) lets an error report name the call.
__device__ inline void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2],
                                    const float c[4], int line = __builtin_LINE())
{ __pal_mma_m16n8k16(line, PAL_OP_MMA_F16, d, a, b, c, false); }

__device__ inline void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2],
                                         const float c[4], int line = __builtin_LINE())
{ __pal_mma_m16n8k16(line, PAL_OP_MMA_BF16, d, a, b, c, true); }

__device__ inline void mma_m16n8k32_e4m3(float d[4], const unsigned a[4], const unsigned b[2],
                                         const float c[4], int line = __builtin_LINE())
{ __pal_mma_m16n8k32_e4m3(line, d, a, b, c); }

__device__ inline void mma_m16n8k32_s8(int d[4], const unsigned a[4], const unsigned b[2],
                                       const int c[4], int line = __builtin_LINE())
{ __pal_mma_m16n8k32_s8(line, d, a, b, c); }

__device__ inline void ldmatrix_x1(unsigned r[1], const void* row, int line = __builtin_LINE())
{ __pal_ldmatrix(line, PAL_OP_LDMATRIX_X1, "ldmatrix_x1", r, 1, false, row); }

__device__ inline void ldmatrix_x2(unsigned r[2], const void* row, int line = __builtin_LINE())
{ __pal_ldmatrix(line, PAL_OP_LDMATRIX_X2, "ldmatrix_x2", r, 2, false, row); }

__device__ inline void ldmatrix_x4(unsigned r[4], const void* row, int line = __builtin_LINE())
{ __pal_ldmatrix(line, PAL_OP_LDMATRIX_X4, "ldmatrix_x4", r, 4, false, row); }

__device__ inline void ldmatrix_x1_trans(unsigned r[1], const void* row,
                                         int line = __builtin_LINE())
{ __pal_ldmatrix(line, PAL_OP_LDMATRIX_X1_TRANS, "ldmatrix_x1_trans", r, 1, true, row); }

__device__ inline void ldmatrix_x2_trans(unsigned r[2], const void* row,
                                         int line = __builtin_LINE())
{ __pal_ldmatrix(line, PAL_OP_LDMATRIX_X2_TRANS, "ldmatrix_x2_trans", r, 2, true, row); }

__device__ inline void ldmatrix_x4_trans(unsigned r[4], const void* row,
                                         int line = __builtin_LINE())
{ __pal_ldmatrix(line, PAL_OP_LDMATRIX_X4_TRANS, "ldmatrix_x4_trans", r, 4, true, row); }

__device__ inline unsigned movmatrix_trans(unsigned x, int line = __builtin_LINE())
{ return __pal_movmatrix_trans(line, x); }

__device__ inline unsigned pack2_half(float lo, float hi) { return __pal_pack2_half(lo, hi); }
__device__ inline unsigned pack2_bf16(float lo, float hi) { return __pal_pack2_bf16(lo, hi); }

#endif
#endif
