// fp8 (cuda_fp8.h) conversions, element-wise, for the tests against ml_dtypes.
#include <cuda_fp8.h>

// float -> fp8 bits, both kinds, saturating and not.
extern "C" __global__ void float_to_fp8(const float* x, unsigned char* e4_sat,
                                        unsigned char* e4_nosat, unsigned char* e5_sat,
                                        unsigned char* e5_nosat, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    e4_sat[i] = __nv_cvt_float_to_fp8(x[i], __NV_SATFINITE, __NV_E4M3);
    e4_nosat[i] = __nv_cvt_float_to_fp8(x[i], __NV_NOSAT, __NV_E4M3);
    e5_sat[i] = __nv_cvt_float_to_fp8(x[i], __NV_SATFINITE, __NV_E5M2);
    e5_nosat[i] = __nv_cvt_float_to_fp8(x[i], __NV_NOSAT, __NV_E5M2);
}

// fp8 bits -> float and half, both kinds (through the classes and the raw conversions).
extern "C" __global__ void fp8_to_wide(const unsigned char* bits, float* e4, float* e5,
                                       __half* h4, __half* h5, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __nv_fp8_e4m3 a;
    a.__x = bits[i];
    __nv_fp8_e5m2 b;
    b.__x = bits[i];
    e4[i] = float(a);
    e5[i] = static_cast<float>(b);
    h4[i] = __half(__nv_cvt_fp8_to_halfraw(bits[i], __NV_E4M3));
    h5[i] = static_cast<__half>(b);
}

// Half -> fp8 (saturating, through the class) and the x4 pack's round trip.
extern "C" __global__ void half_and_x4(const __half* h, __nv_fp8_e4m3* q, const float* x,
                                       float* x4_back, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) q[i] = __nv_fp8_e4m3(h[i]);
    if (4 * i + 3 < n) {
        float4 v = make_float4(x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]);
        float4 r = static_cast<float4>(__nv_fp8x4_e4m3(v));
        x4_back[4 * i] = r.x; x4_back[4 * i + 1] = r.y;
        x4_back[4 * i + 2] = r.z; x4_back[4 * i + 3] = r.w;
    }
}
