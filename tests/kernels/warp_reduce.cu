// Warp-shuffle reductions: each warp sums its 32 values with shuffles, then warp 0 sums the
// per-warp results (staged in shared memory).
__device__ __forceinline__ float warp_sum_xor(float v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;   // every lane holds the sum
}

__device__ __forceinline__ float warp_sum_down(float v)
{
    for (int off = warpSize / 2; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;   // lane 0 holds the sum
}

extern "C" __global__ void warp_sums(const float* __restrict__ x, float* __restrict__ out_xor,
                                     float* __restrict__ out_down, int n)
{
    __shared__ float s_xor[32], s_down[32];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    float v = i < n ? x[i] : 0.0f;
    float a = warp_sum_xor(v);
    float b = warp_sum_down(v);
    if (lane == 0) { s_xor[warp] = a; s_down[warp] = b; }
    __syncthreads();
    if (warp == 0) {
        float ta = lane < nwarps ? s_xor[lane] : 0.0f;
        float tb = lane < nwarps ? s_down[lane] : 0.0f;
        ta = warp_sum_xor(ta);
        tb = warp_sum_down(tb);
        if (lane == 0) { out_xor[blockIdx.x] = ta; out_down[blockIdx.x] = tb; }
    }
}

// Shuffle variants with width, on ints: out = value of lane (lane + 1) % 8 in groups of 8,
// the inclusive prefix sum by __shfl_up_sync, and the ballot of odd values.
extern "C" __global__ void warp_misc(const int* __restrict__ x, int* __restrict__ rotated,
                                     int* __restrict__ scan, unsigned int* __restrict__ ballots)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int lane = threadIdx.x & 31;
    int v = x[i];
    rotated[i] = __shfl_sync(0xffffffffu, v, (lane + 1) % 8, 8);
    int s = v;
    for (int off = 1; off < 32; off <<= 1) {
        int t = __shfl_up_sync(0xffffffffu, s, off);
        if (lane >= off) s += t;
    }
    scan[i] = s;
    unsigned int b = __ballot_sync(0xffffffffu, v & 1);
    if (lane == 0) ballots[i / 32] = b;
}
