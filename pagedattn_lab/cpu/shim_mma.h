// nvcuda::wmma (mma.h) for the CPU executor: the 16x16x16 shape, __half and __nv_bfloat16
// inputs, float (or __half) accumulators. Included by include/mma.h.
//
// Element mapping (the GPU's is unspecified; portable code loops over num_elements and
// never assumes one): lane l of a warp holds row r = l / 2, columns c = (l % 2) * 8 + i of
// the fragment's logical matrix in x[i], i = 0..7 (A: rows m, columns k; B: rows k,
// columns n; accumulators: rows m, columns n). num_elements is the GPU's: 16 for __half
// matrix_a/matrix_b fragments, whose x[8 + i] mirror x[i] (loads fill both; mma_sync reads
// x[0..7]), and 8 for the others.
//
// load_matrix_sync, store_matrix_sync and mma_sync are warp-collective, as on the GPU: every
// lane of the warp must reach them (a lane that exited or does not exist is reported like a
// shuffle with a bad mask, and lanes waiting at another warp-wide call, one that some lanes
// skipped inside an if, are reported by name: device_api.cpp's wide_call_apart). Each lane
// loads and stores its own elements, so out-of-bounds accesses name the lane that made them.
// mma_sync multiplies exactly (products of two halves or bf16 are exact in float) and
// accumulates in float in k order; a tensor core may round differently in the last bits.
// satf is ignored. ldm must be a multiple of 16 bytes, as CUDA requires (checked); pointer
// alignment (256 bits on the GPU) is not checked here.
#ifndef PAGEDATTN_LAB_SHIM_MMA_H
#define PAGEDATTN_LAB_SHIM_MMA_H

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace __pal {
template <class Use, class T> struct elements {
    static_assert(sizeof(T) == 0, "the CPU executor's WMMA supports __half and __nv_bfloat16 "
                                  "inputs and float or __half accumulators");
};
template <> struct elements<matrix_a, __half> { enum { value = 16 }; };
template <> struct elements<matrix_b, __half> { enum { value = 16 }; };
template <> struct elements<matrix_a, __nv_bfloat16> { enum { value = 8 }; };
template <> struct elements<matrix_b, __nv_bfloat16> { enum { value = 8 }; };
template <> struct elements<accumulator, float> { enum { value = 8 }; };
template <> struct elements<accumulator, __half> { enum { value = 8 }; };
template <class T> struct identity { typedef T type; };
template <class A, class B> struct same { enum { value = 0 }; };
template <class A> struct same<A, A> { enum { value = 1 }; };

inline int row_of(int lane) { return lane >> 1; }
inline int col_of(int lane, int i) { return ((lane & 1) << 3) + i; }

// Lanes publish their A and B fragments here for mma_sync (per worker process; blocks of
// one worker run one after another).
static const void *published_a[PAL_MAX_THREADS], *published_b[PAL_MAX_THREADS];

inline void collective(const char *file, int line, int op)
{
    (void)file;
    __pal_warp_op(line, op, 0xffffffffu, 0, 0, 32);
}

inline void check_ldm(const char *file, int line, const char *func, unsigned ldm, unsigned size)
{
    if ((ldm * size) % 16 != 0)
        __pal_assert_fail("ldm is a multiple of 16 bytes (8 for __half/__nv_bfloat16, 4 for "
                          "float elements), as CUDA requires", file, line, func);
}
}  // namespace __pal

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
    static_assert(M == 16 && N == 16 && K == 16,
                  "the CPU executor's WMMA supports the 16x16x16 shape only");

  public:
    typedef T element_type;
    typedef T storage_element_type;
    enum { num_elements = __pal::elements<Use, T>::value };
    T x[num_elements];
};

template <class Use, int M, int N, int K, class T, class L>
inline void fill_fragment(fragment<Use, M, N, K, T, L> &f,
                          const typename __pal::identity<T>::type &v)
{
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

// matrix_a / matrix_b: the layout comes from the fragment's type.
template <class Use, class T, class L>
inline void __pal_load_matrix_sync(const char *file, int line,
                                   fragment<Use, 16, 16, 16, T, L> &f,
                                   const typename __pal::identity<T>::type *p, unsigned ldm)
{
    static_assert(__pal::same<L, row_major>::value || __pal::same<L, col_major>::value,
                  "matrix_a/matrix_b fragments need a row_major or col_major layout");
    __pal::check_ldm(file, line, "wmma::load_matrix_sync", ldm, sizeof(T));
    __pal::collective(file, line, PAL_OP_WMMA_LOAD);
    const int lane = __pal_thread_linear() & 31, r = __pal::row_of(lane);
    for (int i = 0; i < 8; ++i) {
        const int c = __pal::col_of(lane, i);
        if constexpr (__pal::same<L, row_major>::value) f.x[i] = p[(size_t)r * ldm + c];
        else f.x[i] = p[(size_t)c * ldm + r];
    }
    for (int i = 8; i < f.num_elements; ++i) f.x[i] = f.x[i - 8];
}

// Accumulators: the memory layout is an argument.
template <class T>
inline void __pal_load_matrix_sync(const char *file, int line,
                                   fragment<accumulator, 16, 16, 16, T, void> &f,
                                   const typename __pal::identity<T>::type *p, unsigned ldm,
                                   layout_t layout)
{
    __pal::check_ldm(file, line, "wmma::load_matrix_sync", ldm, sizeof(T));
    __pal::collective(file, line, PAL_OP_WMMA_LOAD);
    const int lane = __pal_thread_linear() & 31, r = __pal::row_of(lane);
    for (int i = 0; i < 8; ++i) {
        const int c = __pal::col_of(lane, i);
        f.x[i] = layout == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
    }
}

template <class T>
inline void __pal_store_matrix_sync(const char *file, int line,
                                    typename __pal::identity<T>::type *p,
                                    const fragment<accumulator, 16, 16, 16, T, void> &f,
                                    unsigned ldm, layout_t layout)
{
    __pal::check_ldm(file, line, "wmma::store_matrix_sync", ldm, sizeof(T));
    const int lane = __pal_thread_linear() & 31, r = __pal::row_of(lane);
    for (int i = 0; i < 8; ++i) {
        const int c = __pal::col_of(lane, i);
        if (layout == mem_row_major) p[(size_t)r * ldm + c] = f.x[i];
        else p[(size_t)c * ldm + r] = f.x[i];
    }
    // After the stores, so that the values are in place for a lane that reads them after a
    // __syncwarp() (the race check reports a read without one, as compute-sanitizer does).
    __pal::collective(file, line, PAL_OP_WMMA_STORE);
}

template <class T, class LA, class LB, class TC>
inline void __pal_mma_sync(const char *file, int line, fragment<accumulator, 16, 16, 16, TC> &d,
                           const fragment<matrix_a, 16, 16, 16, T, LA> &a,
                           const fragment<matrix_b, 16, 16, 16, T, LB> &b,
                           const fragment<accumulator, 16, 16, 16, TC> &c, bool satf = false)
{
    (void)satf;
    const int t = __pal_thread_linear(), lane = t & 31, w0 = t - lane, r = __pal::row_of(lane);
    __pal::published_a[t] = &a;
    __pal::published_b[t] = &b;
    __pal::collective(file, line, PAL_OP_WMMA_MMA);   // every lane has published
    typedef fragment<matrix_a, 16, 16, 16, T, LA> FA;
    typedef fragment<matrix_b, 16, 16, 16, T, LB> FB;
    float out[8];
    for (int i = 0; i < 8; ++i) {
        const int col = __pal::col_of(lane, i);
        float acc = (float)c.x[i];
        for (int k = 0; k < 16; ++k) {   // A[r][k]: lane 2r + k/8; B[k][col]: lane 2k + col/8
            const FA *fa = (const FA *)__pal::published_a[w0 + 2 * r + (k >> 3)];
            const FB *fb = (const FB *)__pal::published_b[w0 + 2 * k + (col >> 3)];
            acc += (float)fa->x[k & 7] * (float)fb->x[col & 7];
        }
        out[i] = acc;
    }
    __pal::collective(file, line, PAL_OP_WMMA_MMA);   // no lane changes a or b before all read
    for (int i = 0; i < 8; ++i) d.x[i] = out[i];
}

}  // namespace wmma
}  // namespace nvcuda

// The collectives name their caller's line in reports, like the shuffles.
#define load_matrix_sync(...) __pal_load_matrix_sync(__FILE__, __LINE__, __VA_ARGS__)
#define store_matrix_sync(...) __pal_store_matrix_sync(__FILE__, __LINE__, __VA_ARGS__)
#define mma_sync(...) __pal_mma_sync(__FILE__, __LINE__, __VA_ARGS__)

#endif
