// c[i] = a[i] + b[i]: one thread per element, with a tail guard for the last block.
extern "C" __global__ void vector_add(const float* __restrict__ a, const float* __restrict__ b,
                                      float* __restrict__ c, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}

// Grid-stride loop over a double array with a scale: exercises double and a float scalar.
extern "C" __global__ void axpy_f64(double* y, const double* x, double alpha, long long n)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] += alpha * x[i];
}
