// WMMA (mma.h) and bfloat16 (cuda_bf16.h) on the CPU executor. The same source compiles
// under NVRTC (with the CUDA include directory).
#include <mma.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
using namespace nvcuda;

// Warp w of the block computes tile w: D_w = A_w B_w + C_w, where A_w starts at
// a + w * 16 * lda etc. Layouts: bit 0 of `mode` A col-major, bit 1 B col-major, bit 2 C
// loaded col-major, bit 3 D stored col-major. `scale` multiplies the accumulator element by
// element before the store (a loop over num_elements, as portable code writes it).
template <class T, class LA, class LB>
__device__ void tile_gemm(const T* a, const T* b, const float* c, float* d, int mode, int lda,
                          int ldb, int ldc, int ldd, float scale)
{
    int w = (threadIdx.x + blockDim.x * threadIdx.y) / 32;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LB> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::load_matrix_sync(fa, a + w * 16 * lda, lda);
    wmma::load_matrix_sync(fb, b + w * 16 * ldb, ldb);
    wmma::load_matrix_sync(acc, c + w * 16 * ldc, ldc,
                           (mode & 4) ? wmma::mem_col_major : wmma::mem_row_major);
    wmma::mma_sync(acc, fa, fb, acc);
    for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= scale;
    wmma::store_matrix_sync(d + w * 16 * ldd, acc, ldd,
                            (mode & 8) ? wmma::mem_col_major : wmma::mem_row_major);
}

template <class T>
__device__ void dispatch(const T* a, const T* b, const float* c, float* d, int mode, int lda,
                         int ldb, int ldc, int ldd, float scale)
{
    switch (mode & 3) {
    case 0: tile_gemm<T, wmma::row_major, wmma::row_major>(a, b, c, d, mode, lda, ldb, ldc, ldd, scale); break;
    case 1: tile_gemm<T, wmma::col_major, wmma::row_major>(a, b, c, d, mode, lda, ldb, ldc, ldd, scale); break;
    case 2: tile_gemm<T, wmma::row_major, wmma::col_major>(a, b, c, d, mode, lda, ldb, ldc, ldd, scale); break;
    default: tile_gemm<T, wmma::col_major, wmma::col_major>(a, b, c, d, mode, lda, ldb, ldc, ldd, scale);
    }
}

extern "C" __global__ void gemm_f16(const __half* a, const __half* b, const float* c, float* d,
                                    int mode, int lda, int ldb, int ldc, int ldd, float scale)
{
    dispatch(a, b, c, d, mode, lda, ldb, ldc, ldd, scale);
}

extern "C" __global__ void gemm_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b,
                                     const float* c, float* d, int mode, int lda, int ldb,
                                     int ldc, int ldd, float scale)
{
    dispatch(a, b, c, d, mode, lda, ldb, ldc, ldd, scale);
}

// A half accumulator: D (half) = A B + 0, stored row-major.
extern "C" __global__ void gemm_f16_acc_f16(const __half* a, const __half* b, __half* d)
{
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, __half> acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

// The documented element mapping: lane l writes its x[i] and num_elements.
extern "C" __global__ void fragment_map(const __half* a, float* x, int* counts)
{
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::load_matrix_sync(fa, a, 16);
    int lane = threadIdx.x;
    for (int i = 0; i < fa.num_elements; ++i) x[lane * 16 + i] = __half2float(fa.x[i]);
    if (lane == 0) {
        counts[0] = fa.num_elements;
        counts[1] = fb.num_elements;
        counts[2] = fc.num_elements;
    }
}

// Lane `quitter` returns before the load: every lane must reach a WMMA call.
extern "C" __global__ void lane_leaves(const __half* a, float* d, int quitter)
{
    if ((int)threadIdx.x == quitter) return;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a, 16);
    d[threadIdx.x] = __half2float(fa.x[0]);
}

// ldm must be a multiple of 16 bytes.
extern "C" __global__ void bad_ldm(const __half* a, float* d, int ldm)
{
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a, ldm);
    d[threadIdx.x] = __half2float(fa.x[0]);
}

// bfloat16 conversions and arithmetic, element-wise.
extern "C" __global__ void bf16_convert(const float* x, __nv_bfloat16* rn, float* back,
                                        __nv_bfloat16* prod, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    rn[i] = __float2bfloat16(x[i]);
    back[i] = __bfloat162float(rn[i]);
    __nv_bfloat162 pair = __floats2bfloat162_rn(x[i], 2.0f);
    prod[i] = __hmul(pair.x, __low2bfloat16(__float2bfloat162_rn(x[n - 1 - i])))
              + __high2bfloat16(pair) - __float2bfloat16_rn(2.0f);
}

// Tiles staged in shared memory, multiplied, the result stored to shared memory and read
// back by other lanes. Race-free with both __syncwarp()s (sync = 3): bit 0 orders the
// staging before the loads, bit 1 the store before the other lanes' reads. The WMMA calls
// wait for the warp but order no memory, so leaving either out is a race.
extern "C" __global__ void smem_gemm(const __half* a, const __half* b, float* d, int sync)
{
    __shared__ __half sa[16 * 16], sb[16 * 16];
    __shared__ float sd[16 * 16];
    for (int i = threadIdx.x; i < 256; i += 32) { sa[i] = a[i]; sb[i] = b[i]; }
    if (sync & 1) __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::load_matrix_sync(fa, sa, 16);
    wmma::load_matrix_sync(fb, sb, 16);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(sd, acc, 16, wmma::mem_row_major);
    if (sync & 2) __syncwarp();
    for (int i = threadIdx.x; i < 256; i += 32) d[i] = sd[255 - i];
}
