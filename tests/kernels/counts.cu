// Kernels with known memory-access counts, for pagedattn_lab.cpu.count_accesses.

// Lane l reads a[l * stride]: stride 1 is coalesced (4 sectors per 32 lanes), stride 0 a
// broadcast (1 sector), stride 8 one sector per lane (32).
extern "C" __global__ void strided_read(const float* a, float* out, int stride)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    out[i] = a[threadIdx.x * stride];
}

// One 16-byte load and one 16-byte store per thread.
extern "C" __global__ void copy_float4(const float* a, float* b)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    reinterpret_cast<float4*>(b)[i] = reinterpret_cast<const float4*>(a)[i];
}

// Shared memory: lane l writes s[l * stride] and reads it back (stride 32: every lane in
// bank 0, a 32-way conflict; stride 1: none).
extern "C" __global__ void shared_stride(float* out, int stride)
{
    __shared__ float s[32 * 32];
    int t = threadIdx.x;
    s[t * stride] = (float)t;
    __syncthreads();
    out[t] = s[t * stride];
}

// Every thread adds into one global counter with an atomic.
extern "C" __global__ void count_atomic(int* counter)
{
    atomicAdd(counter, 1);
}

// A 2-D grid of 2-D blocks: thread (x, y) of block (bx, by) reads y + 1 values.
extern "C" __global__ void triangle(const float* a, float* out, int width)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
    float s = 0.0f;
    for (int k = 0; k <= (int)threadIdx.y; ++k) s += a[k];
    out[y * width + x] = s;
}
