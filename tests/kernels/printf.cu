// printf from device code: thread 0 of each block and one special thread print.
extern "C" __global__ void hello(const int* x, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (threadIdx.x == 0) printf("block %d of %d starts with x=%d\n", blockIdx.x, gridDim.x, x[i]);
    if (i == n - 1) printf("last thread %d: %.3f\n", i, 0.5f * x[i]);
}

// Prints a lot (to test the output cap).
extern "C" __global__ void chatty(int lines)
{
    for (int i = 0; i < lines; ++i) printf("thread %3d line %6d: 0123456789012345678901234567890123456789\n", threadIdx.x, i);
}
