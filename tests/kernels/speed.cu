// ~1k flops per thread (100 iterations of 9) of dependent math: the speed test of the
// CPU executor. Every step is a contraction, so the values stay bounded.
extern "C" __global__ void busy(const float* __restrict__ x, float* __restrict__ y, int iters)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float a = x[i], b = 1.0f, c = 0.5f;
    for (int k = 0; k < iters; ++k) {
        b = fmaf(a, 0.5f, b) * 0.75f;
        c = fmaf(b, 0.25f, c) * 0.5f;
        a = fmaf(c, 0.125f, a) * 0.875f;
    }
    y[i] = a + b + c;
}

// Barrier-heavy: 32 rounds of a shared-memory reduction plus a warp-shuffle reduction.
extern "C" __global__ void barrier_heavy(const float* __restrict__ x, float* __restrict__ out, int rounds)
{
    extern __shared__ float s[];
    int tid = threadIdx.x;
    float total = 0.0f;
    for (int r = 0; r < rounds; ++r) {
        s[tid] = x[blockIdx.x * blockDim.x + tid] * (r + 1);
        __syncthreads();
        for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
            if (tid < stride) s[tid] += s[tid + stride];
            __syncthreads();
        }
        float v = s[0];
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        total += v;
        __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = total;
}
