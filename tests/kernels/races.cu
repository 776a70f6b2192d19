// Shared-memory races the race check must find, and their correct versions it must pass.

// The classic: every thread adds into one __shared__ accumulator.
extern "C" __global__ void shared_accumulator(const float* x, float* out)
{
    __shared__ float acc;
    if (threadIdx.x == 0) acc = 0.0f;
    __syncthreads();
    acc += x[blockIdx.x * blockDim.x + threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

// The same with atomicAdd: correct.
extern "C" __global__ void shared_accumulator_atomic(const float* x, float* out)
{
    __shared__ float acc;
    if (threadIdx.x == 0) acc = 0.0f;
    __syncthreads();
    atomicAdd(&acc, x[blockIdx.x * blockDim.x + threadIdx.x]);
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

// Reading the atomically updated total without the barrier after the atomics.
extern "C" __global__ void atomic_then_read(const float* x, float* out)
{
    __shared__ float acc;
    if (threadIdx.x == 0) acc = 0.0f;
    __syncthreads();
    atomicAdd(&acc, x[threadIdx.x]);
    out[threadIdx.x] = acc;
}

// A tile staged in shared memory and read by neighbours; `sync` = 0 leaves out the barrier
// between the writes and the reads (dynamic shared memory, `tile`).
extern "C" __global__ void shift_tile(const float* x, float* y, int sync)
{
    extern __shared__ float tile[];
    int t = threadIdx.x, n = blockDim.x;
    tile[t] = x[blockIdx.x * n + t];
    if (sync) __syncthreads();
    y[blockIdx.x * n + t] = tile[(t + 1) % n];
}

// Two threads write one flag (write after write), only in block `bad_block`.
extern "C" __global__ void two_writers(int* out, int bad_block)
{
    __shared__ int flag;
    if (threadIdx.x == 0 || (blockIdx.x == bad_block && threadIdx.x == 33)) flag = threadIdx.x;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = flag;
}

// A warp-level tree in shared memory: lanes exchange values through `s`, ordered by
// __syncwarp() when `sync` is 1; without it (0), a race inside the warp, and with a shuffle
// in its place (2) too: a shuffle waits for the warp but orders no memory.
__device__ void warp_order(int sync)
{
    if (sync == 1) __syncwarp();
    if (sync == 2) (void)__shfl_sync(0xffffffffu, 0, 0);
}

extern "C" __global__ void warp_tree(const float* x, float* out, int sync)
{
    __shared__ float s[64];
    int t = threadIdx.x;
    s[t] = x[t];
    warp_order(sync);
    for (int off = 16; off > 0; off >>= 1) {
        float v = (t % 32) < off ? s[t + off] : 0.0f;
        warp_order(sync);
        s[t] += v;
        warp_order(sync);
    }
    if (t % 32 == 0) out[t / 32] = s[t];
}

// Double-buffered loop without the barrier at the end of an iteration: the next
// iteration's writes overwrite what a slower thread still reads (write after read).
extern "C" __global__ void loop_without_trailing_barrier(const float* x, float* out, int iters)
{
    __shared__ float s[128];
    int t = threadIdx.x, n = blockDim.x;
    float acc = 0.0f;
    for (int i = 0; i < iters; ++i) {
        s[t] = x[i * n + t];
        __syncthreads();
        acc += s[(t + 1) % n];
    }
    out[t] = acc;
}

// Lane 0 writes s[0]; then the two half-warps each pass their own __syncwarp() (disjoint
// masks); lane `reader` reads s[0]. Lanes 0-15 passed one together, lane 16 did not pass
// one with lane 0: a race for reader 16, none for reader 15.
extern "C" __global__ void half_warps(float* out, int reader)
{
    __shared__ float s[32];
    const int t = threadIdx.x;
    if (t == 0) s[0] = 1.0f;
    if (t < 16) __syncwarp(0x0000ffffu);
    else __syncwarp(0xffff0000u);
    if (t == reader) out[0] = s[0];
}
