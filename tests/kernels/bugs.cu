// Planted bugs, each caught by the CPU executor and named in the exception.

// Off-by-one: i <= n reads a[n], one past the end.
extern "C" __global__ void read_past_end(const float* __restrict__ a, float* __restrict__ out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i < n ? i : 0] = a[i];
}

// Writes one past the end of out.
extern "C" __global__ void write_past_end(const float* __restrict__ a, float* __restrict__ out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i + 1] = a[i];
}

// The guide's bug: threads past the end return before a barrier the others wait at.
extern "C" __global__ void early_return(const float* __restrict__ a, float* __restrict__ out, int n)
{
    __shared__ float s[128];
    if (threadIdx.x >= n) return;
    s[threadIdx.x] = a[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % n];
}

// Spins on a flag that nobody sets: an endless loop.
extern "C" __global__ void spin(int* flag)
{
    while (*(volatile int*)flag == 0) {}
}

// A full-mask shuffle in a block of 48 threads: lanes 16..31 of warp 1 do not exist.
extern "C" __global__ void partial_warp(const float* a, float* out)
{
    float v = a[threadIdx.x];
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

// A huge local array overflows the fiber's stack.
extern "C" __global__ void big_local(float* out, int n)
{
    float buf[1 << 20];
    for (int i = 0; i < n; ++i) buf[i] = i;
    out[threadIdx.x] = buf[n - 1 - threadIdx.x];
}

// Dynamic shared memory used without shared_mem at the launch.
extern "C" __global__ void needs_smem(float* out)
{
    extern __shared__ float s[];
    s[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[0];
}

// A device-side assert.
extern "C" __global__ void asserts(const int* x, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) assert(x[i] >= 0);
}

// Half of a warp returns, the other half shuffles with a full mask.
extern "C" __global__ void shuffle_after_return(const float* a, float* out)
{
    if (threadIdx.x >= 16) return;
    float v = a[threadIdx.x];
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
