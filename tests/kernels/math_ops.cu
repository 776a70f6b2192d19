// The math functions and intrinsics the course's kernels use, one output row each.
#define NOUT 20

__device__ __forceinline__ float clampf(float v) { return fminf(fmaxf(v, -50.0f), 50.0f); }

extern "C" __global__ void __launch_bounds__(128) math_ops(const float* __restrict__ x,
                                                           float* __restrict__ out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = __ldg(x + i), a = fabsf(v) + 0.5f;
    float r[NOUT] = {
        expf(clampf(v)), __expf(clampf(v)), exp2f(clampf(v)), logf(a), __logf(a),
        fmaxf(v, 0.25f), fminf(v, 0.25f), fabsf(v), sqrtf(a), rsqrtf(a),
        __fdividef(v, a), powf(a, 1.5f), floorf(v), ceilf(v), max(v, -0.5f),
        (float)min((int)(v * 10.0f), 3), (float)max(i % 7, 2),
        __int_as_float(__float_as_int(v)), __uint_as_float(__float_as_uint(v) ^ 0x80000000u),
        __int_as_float(0xff800000) < -1e38f ? 1.0f : 0.0f,
    };
#pragma unroll
    for (int k = 0; k < NOUT; ++k) out[k * n + i] = r[k];
}
