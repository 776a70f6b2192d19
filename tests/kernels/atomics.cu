// Histogram with atomics: per-block histogram in shared memory (atomicAdd on shared),
// merged into the global one with atomicAdd from many blocks.
#define NBINS 64

extern "C" __global__ void histogram(const int* __restrict__ values, unsigned int* __restrict__ bins, int n)
{
    __shared__ unsigned int local[NBINS];
    for (int b = threadIdx.x; b < NBINS; b += blockDim.x) local[b] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        atomicAdd(&local[values[i] % NBINS], 1u);
    __syncthreads();
    for (int b = threadIdx.x; b < NBINS; b += blockDim.x) atomicAdd(&bins[b], local[b]);
}

// Global float sum, the maximum with atomicMax on int, and an atomicCAS-based counter.
extern "C" __global__ void atomic_misc(const float* __restrict__ x, const int* __restrict__ k,
                                       float* total, int* kmax, int* kmin, int* cas_count, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        atomicAdd(total, x[i]);
        atomicMax(kmax, k[i]);
        atomicMin(kmin, k[i]);
        int old = *cas_count, assumed;
        do {
            assumed = old;
            old = atomicCAS(cas_count, assumed, assumed + 1);
        } while (old != assumed);
    }
}
