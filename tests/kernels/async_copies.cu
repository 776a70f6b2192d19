// The CPU executor's cp.async (cpu/shim_async.h) through the course's own helpers
// (kernels/common.cuh: copy16_async, copy_commit, copy_wait<N>). Blocks of 64 threads, each
// thread copying 16 bytes (4 floats) per tile.
#include "common.cuh"

// A double-buffered pipeline over `tiles` tiles of 256 floats. Each thread reads another
// thread's element, so every read needs the barrier after the wait; with `trailing` 0 the
// barrier at the end of an iteration is missing, and the copy issued at the top of the next
// overwrites a buffer that slower threads still read (write after read on a GPU).
extern "C" __global__ void pipeline(const float* in, float* out, int tiles, int trailing)
{
    __shared__ __align__(16) float buf[2][256];
    const int t = threadIdx.x;
    copy16_async(&buf[0][4 * t], in + 4 * t, true);
    copy_commit();
    float acc = 0.0f;
    for (int i = 0; i < tiles; ++i) {
        if (i + 1 < tiles)
            copy16_async(&buf[(i + 1) % 2][4 * t], in + (i + 1) * 256 + 4 * t, true);
        copy_commit();
        copy_wait<1>();                       // tile i has landed (this thread's copy) ...
        __syncthreads();                      // ... and everyone else's
        acc += buf[i % 2][(4 * t + 100) % 256];
        if (trailing) __syncthreads();        // every thread is done with buffer i % 2
    }
    out[t] = acc;
}

// Each thread copies its 16 bytes (zeros when !valid), waits, and reads the next thread's:
// with `barrier` 0 that read has no __syncthreads() after the other thread's wait.
extern "C" __global__ void neighbour(const float* in, float* out, int valid, int barrier)
{
    __shared__ __align__(16) float s[256];
    const int t = threadIdx.x;
    copy16_async(&s[4 * t], in + 4 * t, valid != 0);
    copy_commit();
    copy_wait<0>();
    if (barrier) __syncthreads();
    out[t] = s[(4 * t + 4) % 256];
}

// wait_group's rule: two committed groups and one copy not yet committed; copy_wait<1>
// lands the first group only (each thread reads its own slots: no barrier needed). Blocks of
// 64 threads in any shape; out is [block][thread][group].
extern "C" __global__ void groups(const float* in, float* out)
{
    __shared__ __align__(16) float s[3][256];
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    for (int g = 0; g < 3; ++g) {
        copy16_async(&s[g][4 * t], in + 256 * g + 4 * t, true);
        if (g < 2) copy_commit();
    }
    copy_wait<1>();
    for (int g = 0; g < 3; ++g) out[(blockIdx.x * 64 + t) * 3 + g] = s[g][4 * t];
}
