// Probes of kernels/mma_ptx.cuh: each kernel runs one of its functions and writes what every
// lane got, so tests/test_mma_ptx.py can compare with the PTX ISA's layout tables, on the
// CPU executor and (the same source) on the GPU. Registers are passed in and out as raw
// 32-bit words: 16-bit values are compared by their bits.
#include "mma_ptx.cuh"

// The warp's lanes and the linear id of this thread (blocks are 1-D here).
#define LANE (threadIdx.x & 31)

// Copies `nrows` 16-byte rows of `tile` to dynamic shared memory; each lane then calls the
// ldmatrix variant `variant` (0..2: x1, x2, x4; 3..5: the same with .trans) with the row
// address smem + offset[thread] (in 16-bit elements: the test picks which row each lane names,
// and gives ignored lanes misaligned addresses). out[thread * 4 + i] = r[i]; registers the
// variant does not write stay 0xdeadbeef.
extern "C" __global__ void ldmatrix_probe(const unsigned short* tile, int nrows,
                                          const int* offset, unsigned* out, int variant)
{
    extern __shared__ __align__(16) unsigned short smem[];
    for (int i = threadIdx.x; i < nrows * 8; i += blockDim.x) smem[i] = tile[i];
    __syncthreads();
    const void* row = smem + offset[threadIdx.x];
    unsigned r[4] = {0xdeadbeefu, 0xdeadbeefu, 0xdeadbeefu, 0xdeadbeefu};
    switch (variant) {
    case 0: ldmatrix_x1(r, row); break;
    case 1: ldmatrix_x2(r, row); break;
    case 2: ldmatrix_x4(r, row); break;
    case 3: ldmatrix_x1_trans(r, row); break;
    case 4: ldmatrix_x2_trans(r, row); break;
    default: ldmatrix_x4_trans(r, row); break;
    }
    for (int i = 0; i < 4; ++i) out[threadIdx.x * 4 + i] = r[i];
}

// One mma per warp from registers given per lane: a[thread * 4 + i], b[thread * 2 + i],
// c[thread * 4 + i]; d[thread * 4 + i] = the result. `alias`: the accumulator is updated in
// place (d is c), as kernels do.
extern "C" __global__ void mma_probe(const unsigned* a, const unsigned* b, const float* c,
                                     float* d, int bf16, int alias)
{
    const int t = threadIdx.x;
    unsigned ra[4], rb[2];
    float rc[4], rd[4];
    for (int i = 0; i < 4; ++i) { ra[i] = a[t * 4 + i]; rc[i] = c[t * 4 + i]; rd[i] = -1.0f; }
    for (int i = 0; i < 2; ++i) rb[i] = b[t * 2 + i];
    if (alias) {
        if (bf16) mma_m16n8k16_bf16(rc, ra, rb, rc);
        else mma_m16n8k16(rc, ra, rb, rc);
        for (int i = 0; i < 4; ++i) rd[i] = rc[i];
    } else {
        if (bf16) mma_m16n8k16_bf16(rd, ra, rb, rc);
        else mma_m16n8k16(rd, ra, rb, rc);
    }
    for (int i = 0; i < 4; ++i) d[t * 4 + i] = rd[i];
}

// One m16n8k32 mma per warp over 8-bit values from registers given per lane (as mma_probe):
// s8 = 0: mma_m16n8k32_e4m3 (float c, d), 1: mma_m16n8k32_s8 (int c, d: the same 32-bit words,
// read and written as int).
extern "C" __global__ void mma8_probe(const unsigned* a, const unsigned* b, const unsigned* c,
                                      unsigned* d, int s8)
{
    const int t = threadIdx.x;
    unsigned ra[4], rb[2];
    for (int i = 0; i < 4; ++i) ra[i] = a[t * 4 + i];
    for (int i = 0; i < 2; ++i) rb[i] = b[t * 2 + i];
    if (s8) {
        int rc[4], rd[4];
        for (int i = 0; i < 4; ++i) rc[i] = (int)c[t * 4 + i];
        mma_m16n8k32_s8(rd, ra, rb, rc);
        for (int i = 0; i < 4; ++i) d[t * 4 + i] = (unsigned)rd[i];
    } else {
        float rc[4], rd[4];
        for (int i = 0; i < 4; ++i) rc[i] = __uint_as_float(c[t * 4 + i]);
        mma_m16n8k32_e4m3(rd, ra, rb, rc);
        for (int i = 0; i < 4; ++i) d[t * 4 + i] = __float_as_uint(rd[i]);
    }
}

// out[thread] = movmatrix_trans(x[thread]): each warp transposes its own 8x8 matrix.
extern "C" __global__ void movmatrix_probe(const unsigned* x, unsigned* out)
{
    out[threadIdx.x] = movmatrix_trans(x[threadIdx.x]);
}

// out_h[i] = pack2_half(x[2i], x[2i+1]), out_b[i] = pack2_bf16(x[2i], x[2i+1]).
extern "C" __global__ void pack2_probe(const float* x, unsigned* out_h, unsigned* out_b, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out_h[i] = pack2_half(x[2 * i], x[2 * i + 1]);
        out_b[i] = pack2_bf16(x[2 * i], x[2 * i + 1]);
    }
}

// One warp, one attention step as the tensor-core kernels do it, all through the header:
// S = Q K^T (16 queries x 16 keys, head dim 16) with Q from ldmatrix_x4 (A) and K from
// ldmatrix_x2 per 8 keys (B: K's rows are B's columns), then P = S packed in registers as
// the A operand of O = P V, V from ldmatrix_x2_trans (V's rows are B's k). q, k, v are
// 16x16 __half bits, row-major; o is 16x16 floats. P is rounded to __half, as kernels do.
extern "C" __global__ void attention_step(const unsigned short* q, const unsigned short* k,
                                          const unsigned short* v, float* o)
{
    __shared__ __align__(16) unsigned short qs[16 * 16], ks[16 * 16], vs[16 * 16];
    for (int i = threadIdx.x; i < 256; i += 32) { qs[i] = q[i]; ks[i] = k[i]; vs[i] = v[i]; }
    __syncthreads();
    const int lane = LANE, g = lane >> 2, t = lane & 3;
    unsigned qa[4];
    ldmatrix_x4(qa, &qs[(lane % 16) * 16 + (lane / 16) * 8]);
    float s[2][4];
    for (int j = 0; j < 2; ++j) {   // keys 8j..8j+7: lanes 0-7 name their rows, 8-15 cols 8+
        unsigned kb[2];
        ldmatrix_x2(kb, &ks[(8 * j + lane % 8) * 16 + ((lane / 8) % 2) * 8]);
        const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mma_m16n8k16(s[j], qa, kb, zero);
    }
    const unsigned pa[4] = {pack2_half(s[0][0], s[0][1]), pack2_half(s[0][2], s[0][3]),
                            pack2_half(s[1][0], s[1][1]), pack2_half(s[1][2], s[1][3])};
    for (int j = 0; j < 2; ++j) {   // output columns 8j..8j+7: V[token][8j..]
        unsigned vb[2];
        ldmatrix_x2_trans(vb, &vs[(lane % 16) * 16 + 8 * j]);
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mma_m16n8k16(acc, pa, vb, acc);
        o[g * 16 + 8 * j + 2 * t] = acc[0];
        o[g * 16 + 8 * j + 2 * t + 1] = acc[1];
        o[(g + 8) * 16 + 8 * j + 2 * t] = acc[2];
        o[(g + 8) * 16 + 8 * j + 2 * t + 1] = acc[3];
    }
}

// Lane `skip` does not call (`which`: 0 ldmatrix_x4, 1 mma_m16n8k16, 2 movmatrix_trans): an
// error on the CPU.
extern "C" __global__ void lane_skips(unsigned* out, int skip, int which)
{
    __shared__ __align__(16) unsigned short tile[32 * 8];
    for (int i = threadIdx.x; i < 32 * 8; i += blockDim.x) tile[i] = (unsigned short)i;
    __syncthreads();
    unsigned r[4] = {0u, 0u, 0u, 0u};
    const unsigned b[2] = {0u, 0u};
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if ((int)LANE != skip) {
        if (which == 0) ldmatrix_x4(r, &tile[LANE * 8]);
        else if (which == 1) mma_m16n8k16(acc, r, b, acc);
        else r[0] = movmatrix_trans(b[0]);
    }
    out[threadIdx.x] = r[0] + (unsigned)acc[0];
}

// Lane `bad` names tile + 1 element past its row (misaligned; `global`: the global array
// `tile` itself, not shared memory).
extern "C" __global__ void bad_row(const unsigned short* tile, unsigned* out, int bad, int global)
{
    __shared__ __align__(16) unsigned short rows[32 * 8];
    for (int i = threadIdx.x; i < 32 * 8; i += blockDim.x) rows[i] = tile[i];
    __syncthreads();
    const void* row = &rows[LANE * 8];
    if ((int)LANE == bad) row = global ? (const void*)tile : (const void*)&rows[LANE * 8 + 1];
    unsigned r[4];
    ldmatrix_x4(r, row);
    out[threadIdx.x] = r[0];
}

// Each lane writes its own row, then names the previous lane's: without the __syncwarp() the
// reads race with the writes (the CPU executor's race check names the reading lane).
extern "C" __global__ void rows_of_neighbours(unsigned* out, int sync)
{
    __shared__ __align__(16) unsigned short rows[32 * 8];
    for (int i = 0; i < 8; ++i) rows[LANE * 8 + i] = (unsigned short)(LANE * 8 + i);
    if (sync) __syncwarp();
    unsigned r[4];
    ldmatrix_x4(r, &rows[((LANE + 31) % 32) * 8]);
    out[threadIdx.x] = r[0];
}
