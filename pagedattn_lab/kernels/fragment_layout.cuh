// The element-to-(row, column) mapping of a WMMA accumulator fragment (16x16x16, float),
// learned at run time: WMMA leaves it unspecified, it differs between GPU generations, and
// the CPU executor has one of its own (see prefill_tc.cu's header for how it is used).
//
// learn_layout loads 16x16 matrices holding their own row and column numbers into
// accumulator fragments through a warp-private scratch of 256 floats. A lane then knows, for
// each of its elements, its column and which of the lane's (at most two) rows holds it
// ("slot" 0 or 1), and which lanes hold the same rows (`share`, xor masks): row maxima and
// sums combine over those lanes with group_max / group_sum. Elements come in pairs (2k,
// 2k+1) of adjacent columns of one row. A layout without these properties traps.
#ifndef PAGEDATTN_LAB_FRAGMENT_LAYOUT_CUH
#define PAGEDATTN_LAB_FRAGMENT_LAYOUT_CUH

#include <mma.h>

#define LAYOUT_FULL 0xffffffffu

typedef nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> LayoutFrag;

// What a lane knows about the accumulator layout (see above).
struct Layout {
    unsigned slot1;     // bit i: element i lies in the lane's second row
    unsigned cols;      // 4 bits per element: its column (elements 0..7)
    int row[2];         // the lane's two rows (equal when it holds one)
    unsigned share;     // xor masks of the lanes holding the same rows
};

__device__ inline int elem_col(const Layout& L, int i) { return (L.cols >> (4 * i)) & 15; }

// slot0 or slot1, for a slot known only at run time, as a select: an array indexed by a run-time
// value would live in local memory.
template <typename T>
__device__ inline T pick(int s, T slot0, T slot1) { return s ? slot1 : slot0; }

__device__ inline float group_max(float x, unsigned share)
{
#pragma unroll
    for (int m = 1; m < 32; m <<= 1)
        if (share & m) x = fmaxf(x, __shfl_xor_sync(LAYOUT_FULL, x, m));
    return x;
}

__device__ inline float group_sum(float x, unsigned share)
{
#pragma unroll
    for (int m = 1; m < 32; m <<= 1)
        if (share & m) x += __shfl_xor_sync(LAYOUT_FULL, x, m);
    return x;
}

// Learn the layout through `scratch` (256 floats, warp-private); trap if it is not one this
// kernel can use.
__device__ inline Layout learn_layout(float* scratch, int lane)
{
    LayoutFrag rows, cols;
    for (int i = lane; i < 256; i += 32) scratch[i] = (float)(i / 16);
    __syncwarp();
    nvcuda::wmma::load_matrix_sync(rows, scratch, 16, nvcuda::wmma::mem_row_major);
    __syncwarp();
    for (int i = lane; i < 256; i += 32) scratch[i] = (float)(i % 16);
    __syncwarp();
    nvcuda::wmma::load_matrix_sync(cols, scratch, 16, nvcuda::wmma::mem_row_major);
    __syncwarp();
    static_assert(LayoutFrag::num_elements <= 8, "the layout keeps 4 bits per element in one word");
    Layout L;
    L.row[0] = L.row[1] = (int)rows.x[0];
    L.slot1 = L.cols = 0;
#pragma unroll
    for (int i = 0; i < LayoutFrag::num_elements; ++i) {
        int r = (int)rows.x[i];
        if (r != L.row[0]) { L.row[1] = r; L.slot1 |= 1u << i; }
        L.cols |= (unsigned)cols.x[i] << (4 * i);
    }
    bool ok = true;
    int in0 = 0, in1 = 0;
#pragma unroll
    for (int i = 0; i < LayoutFrag::num_elements; ++i) {
        int r = (int)rows.x[i];
        ok = ok && (r == L.row[0] || r == L.row[1]);
        in0 += r == L.row[0];
        in1 += r != L.row[0];
    }
#pragma unroll
    for (int i = 0; i < LayoutFrag::num_elements; i += 2)   // pairs: one row, adjacent columns, the first even
        ok = ok && rows.x[i] == rows.x[i + 1] && cols.x[i + 1] == cols.x[i] + 1.0f
             && ((int)cols.x[i] & 1) == 0;
    L.share = 0;
    for (int m = 1; m < 32; m <<= 1)
        if (__all_sync(LAYOUT_FULL, __shfl_xor_sync(LAYOUT_FULL, L.row[0], m) == L.row[0] &&
                             __shfl_xor_sync(LAYOUT_FULL, L.row[1], m) == L.row[1]))
            L.share |= m;
    const int lanes = 1 << __popc(L.share);    // the lanes of a group cover each row once
    ok = ok && in0 * lanes == 16 && (in1 == 0 || in1 * lanes == 16);
    if (!__all_sync(LAYOUT_FULL, ok)) __trap();
    return L;
}

#endif  // PAGEDATTN_LAB_FRAGMENT_LAYOUT_CUH
