// The PTX tensor-core instructions of pagedattn_lab/kernels/mma_ptx.cuh for the CPU executor:
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16, movmatrix.sync.aligned.m8n8.trans
// .b16, mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32,
// mma.sync.aligned.m16n8k32.row.col.{f32.e4m3.e4m3.f32,s32.s8.s8.s32} and
// cvt.rn.{f16x2,bf16x2}.f32, with exactly the PTX ISA's
// fragment layouts (mma_ptx.cuh writes them out). Included by include/pagedattn_lab_mma_ptx.h,
// which mma_ptx.cuh includes on the CPU; kernels call the header's functions, never these.
//
// Like WMMA (shim_mma.h), ldmatrix and mma are warp-collective: every lane of the warp must
// reach the call (a lane that exited or does not exist is reported like a shuffle with a bad
// mask, naming the function and its line; lanes waiting at another warp-wide call are named
// too: device_api.cpp's wide_call_apart). Each lane publishes what it brings (ldmatrix: the
// 16-byte row it read; mma: its A and B registers) on its own stack, all lanes meet, each
// lane takes its result from the others', and all meet again before any lane's stack frame
// goes away.
//
// ldmatrix: each lane whose address is used (lanes 0-7 of x1, 0-15 of x2, all of x4) checks
// its address (16-byte aligned, 16 bytes inside shared memory: otherwise the launch fails
// naming the lane) and reads its row itself, so the race check, the access counts and an
// out-of-bounds report attribute the read to the lane whose address it was. The race check
// does not treat a call as a barrier: a row other lanes wrote needs a __syncwarp() first.
//
// mma: products of two f16 or two bf16 values are exact in float (11 + 11 and 8 + 8
// significant bits), unless a bf16 product leaves float's range. Each of a lane's four
// outputs starts from its C value and adds the 16 products in k order (k = 0, 1, ..., 15),
// rounding each sum to float. A tensor core adds in another order and precision, so random
// inputs differ from the GPU by float32 rounding errors (up to 56 ulps of a result made small
// by cancellation, measured on an H200); sums that are exact (small integers) are identical.
// m16n8k32: e4m3 products are exact in float too (4 + 4 significant bits), added to C in k
// order (k = 0, ..., 31) in float; s8 sums are exact integers (int32, wrapping like the GPU's
// .s32 accumulation without .satfinite), identical to the GPU's.
#ifndef PAGEDATTN_LAB_SHIM_MMA_PTX_H
#define PAGEDATTN_LAB_SHIM_MMA_PTX_H

namespace __pal_ptx {

// What each lane publishes, by linear thread id: its row (ldmatrix), its A and B registers
// (mma), its register (movmatrix). Per worker process; blocks of one worker run one after
// another.
static const unsigned short *published_row[PAL_MAX_THREADS];
static const unsigned *published_a[PAL_MAX_THREADS], *published_b[PAL_MAX_THREADS];
static unsigned published_word[PAL_MAX_THREADS];

inline void collective(int line, int op) { __pal_warp_op(line, op, 0xffffffffu, 0, 0, 32); }

inline unsigned pair(unsigned short lo, unsigned short hi) { return lo | (unsigned)hi << 16; }

inline float f16_bits_to_float(unsigned short h) { return __half2float(__ushort_as_half(h)); }
inline float bf16_bits_to_float(unsigned short h) { return __uint_as_float((unsigned)h << 16); }

}  // namespace __pal_ptx

// n = 1, 2, 4 matrices of 8x8 16-bit elements; r[i] gets matrix i's elements (see mma_ptx.cuh).
inline void __pal_ldmatrix(int line, int op, const char *func, unsigned *r, int n, bool trans,
                           const void *row)
{
    using namespace __pal_ptx;
    const int t = __pal_thread_linear(), lane = t & 31, w0 = t - lane, g = lane >> 2, q = lane & 3;
    unsigned short mine[8];
    if (lane < 8 * n) {
        __pal_check_ldmatrix_row(line, func, row);
        memcpy(mine, row, 16);   // this lane's row, read by this lane
    }
    published_row[t] = mine;
    collective(line, op);   // every lane has read and published its row
    for (int i = 0; i < n; ++i) {
        const unsigned short *const *m = &published_row[w0 + 8 * i];   // matrix i's 8 rows
        r[i] = trans ? pair(m[2 * q][g], m[2 * q + 1][g])       // [2t][g], [2t+1][g]
                     : pair(m[g][2 * q], m[g][2 * q + 1]);      // [g][2t], [g][2t+1]
    }
    collective(line, op);   // no lane leaves (and frees its row) before all have read
}

// One m16n8 tile of D = A B + C over K = 8 E elements, E of them packed in each 32-bit
// register (E = 2: m16n8k16 over 16-bit values; E = 4: m16n8k32 over bytes). out[j] for the
// lane's output j (m = g + 8 (j / 2), n = 2t + j % 2) is the sum over k, in k order, of
// A[m][k] B[k][n], each element's bits read through `value` (as a float or an int). A[m][k] is
// element k % E of register (m >= 8) + 2 (k >= 4 E) of lane 4 (m % 8) + k % (4 E) / E; B[k][n]
// is element k % E of register (k >= 4 E) of lane 4n + k % (4 E) / E.
template <int E, typename Acc, typename Value>
inline void __pal_mma_tile(int line, int op, Acc *d, const unsigned *a, const unsigned *b,
                           const Acc *c, Value value)
{
    using namespace __pal_ptx;
    constexpr int BITS = 32 / E, SPAN = 4 * E;   // element bits; k per register of a lane row
    constexpr unsigned MASK = (1u << BITS) - 1;
    const int t = __pal_thread_linear(), lane = t & 31, w0 = t - lane, g = lane >> 2, q = lane & 3;
    published_a[t] = a;
    published_b[t] = b;
    collective(line, op);   // every lane has published
    Acc out[4];
    for (int j = 0; j < 4; ++j) {
        const int m = g + 8 * (j >> 1), n = 2 * q + (j & 1);
        Acc acc = c[j];
        for (int k = 0; k < 8 * E; ++k) {
            const int src = k % SPAN / E, shift = BITS * (k % E);
            const unsigned ab = published_a[w0 + 4 * (m & 7) + src][(m >> 3) + 2 * (k / SPAN)];
            const unsigned bb = published_b[w0 + 4 * n + src][k / SPAN];
            acc = acc + value(ab >> shift & MASK) * value(bb >> shift & MASK);
        }
        out[j] = acc;
    }
    collective(line, op);   // no lane leaves (and frees a, b) before all have read them
    for (int j = 0; j < 4; ++j) d[j] = out[j];   // d may be c: written last
}

// D = A B + C for one m16n8k16 tile; bf16 selects the element type of A and B.
inline void __pal_mma_m16n8k16(int line, int op, float *d, const unsigned *a, const unsigned *b,
                               const float *c, bool bf16)
{
    __pal_mma_tile<2>(line, op, d, a, b, c, [bf16](unsigned h) {
        return bf16 ? __pal_ptx::bf16_bits_to_float((unsigned short)h)
                    : __pal_ptx::f16_bits_to_float((unsigned short)h);
    });
}

inline void __pal_mma_m16n8k32_e4m3(int line, float *d, const unsigned *a, const unsigned *b,
                                    const float *c)
{
    __pal_mma_tile<4>(line, PAL_OP_MMA_E4M3, d, a, b, c,
                      [](unsigned x) { return __pal_fp8_to_float((unsigned char)x, __NV_E4M3); });
}

inline void __pal_mma_m16n8k32_s8(int line, int *d, const unsigned *a, const unsigned *b,
                                  const int *c)
{   // int32 products and sums, wrapping as unsigned (the GPU's .s32 without .satfinite)
    unsigned ud[4], uc[4] = {(unsigned)c[0], (unsigned)c[1], (unsigned)c[2], (unsigned)c[3]};
    __pal_mma_tile<4>(line, PAL_OP_MMA_S8, ud, a, b, uc,
                      [](unsigned x) { return (unsigned)(int)(signed char)x; });
    for (int j = 0; j < 4; ++j) d[j] = (int)ud[j];
}

// movmatrix.sync.aligned.m8n8.trans.b16: lane 4g + t brings M[g][2t, 2t+1] (one register)
// and gets M[2t][g], M[2t+1][g]. M[r][c] is in lane 4r + c / 2, half c % 2.
inline unsigned __pal_movmatrix_trans(int line, unsigned x)
{
    using namespace __pal_ptx;
    const int t = __pal_thread_linear(), lane = t & 31, w0 = t - lane, g = lane >> 2, q = lane & 3;
    published_word[t] = x;
    collective(line, PAL_OP_MOVMATRIX_TRANS);   // every lane has published its register
    const int shift = 16 * (g & 1);
    const unsigned r = pair((unsigned short)(published_word[w0 + 8 * q + g / 2] >> shift),
                            (unsigned short)(published_word[w0 + 8 * q + 4 + g / 2] >> shift));
    collective(line, PAL_OP_MOVMATRIX_TRANS);   // all have read before anyone publishes again
    return r;
}

// cvt.rn.f16x2.f32 / cvt.rn.bf16x2.f32: round to nearest even, lo in the low 16 bits.
inline unsigned __pal_pack2_half(float lo, float hi)
{
    return __pal_ptx::pair(__half_as_ushort(__float2half_rn(lo)),
                           __half_as_ushort(__float2half_rn(hi)));
}
inline unsigned __pal_pack2_bf16(float lo, float hi)
{
    return __pal_ptx::pair(__bfloat16_as_ushort(__float2bfloat16_rn(lo)),
                           __bfloat16_as_ushort(__float2bfloat16_rn(hi)));
}

#endif
