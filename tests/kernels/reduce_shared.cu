// Tree reduction in shared memory: one partial sum per block. Barriers between every step.
#define BLOCK 256

extern "C" __global__ void block_sum(const float* __restrict__ x, float* __restrict__ partial, int n)
{
    __shared__ float s[BLOCK];
    int tid = threadIdx.x;
    int i = blockIdx.x * BLOCK + tid;
    s[tid] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (tid < stride) s[tid] += s[tid + stride];
        __syncthreads();
    }
    if (tid == 0) partial[blockIdx.x] = s[0];
}

// The same with dynamic shared memory (extern __shared__, sized by shared_mem at launch),
// any block size that is a power of two, and a grid-stride loop.
extern "C" __global__ void block_sum_dynamic(const float* __restrict__ x, float* __restrict__ partial, int n)
{
    extern __shared__ __align__(16) float sdata[];
    float acc = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        acc += x[i];
    sdata[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) sdata[threadIdx.x] += sdata[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = sdata[0];
}

// __syncthreads_count: how many elements of each block are positive.
extern "C" __global__ void count_positive(const float* __restrict__ x, int* __restrict__ counts, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int c = __syncthreads_count(i < n && x[i] > 0.0f);
    if (threadIdx.x == 0) counts[blockIdx.x] = c;
}
