// The tensor-core decode kernels' (decode_tc.cu, decode_mma.cu) tile staging: block-table
// lookups, asynchronous K/V copies and the conversion of staged codes. Include after the
// kernel's layout header (which says where chunk c of staged row r goes: stage_at) and
// kv_convert.cuh.
#ifndef DECODE_TC_TILES_CUH
#define DECODE_TC_TILES_CUH

// One tile of K and V (tokens t0 .. t0 + TILE_T - 1) in two steps: the page ids of this
// thread's 16-byte chunks (-1 past the end: zeros, nothing read), read from the block table
// one iteration before the copies need them (an L2 round trip off the path between barrier
// and arithmetic); then the copies.
constexpr int TILE_COPIES = (CP_TOKENS * CHUNKS + CP_THREADS - 1) / CP_THREADS;   // per thread

__device__ inline void tile_pages(int (&pg)[TILE_COPIES], const int* table, int t0, int end,
                                  int page_size, int page_shift, int cid)
{
#pragma unroll
    for (int i = 0; i < TILE_COPIES; ++i) {
        const int c = i * CP_THREADS + cid;
        const int t = t0 + c / CHUNKS;
        pg[i] = -1;   // a token past the end is never looked up
        if (t < end && (CP_TOKENS * CHUNKS % CP_THREADS == 0 || c < CP_TOKENS * CHUNKS))
            pg[i] = table[page_shift >= 0 ? (t >> page_shift) : (t / page_size)];
    }
}

// The copies of one tile into stage buffer `stage` (K rows, then V rows); with per-token
// scales, the thread that copies a row's first chunk also copies its two scales (the scale
// index slot * num_kv_heads + kv_head is the row's element offset / HEAD_DIM).
__device__ inline void copy_tile(unsigned char* ks, float* sc, const CACHE_T* k_cache,
                                 const CACHE_T* v_cache, const float* k_scale,
                                 const float* v_scale, const int (&pg)[TILE_COPIES], int t0,
                                 int page_size, int page_shift, long long page_stride,
                                 long long row_stride, long long head_off, int cid)
{
#pragma unroll
    for (int i = 0; i < TILE_COPIES; ++i) {
        const int c = i * CP_THREADS + cid;
        if (CP_TOKENS * CHUNKS % CP_THREADS == 0 || c < CP_TOKENS * CHUNKS) {
            const int t = t0 + c / CHUNKS;
            const int in_page = page_shift >= 0 ? (t & (page_size - 1)) : (t % page_size);
            const long long e = pg[i] < 0 ? 0 : (long long)pg[i] * page_stride
                                + (long long)in_page * row_stride + head_off
                                + (c % CHUNKS) * CHUNK_ELEMS;
            const int at = stage_at(c / CHUNKS, c % CHUNKS);
            copy16_async(ks + at, k_cache + e, pg[i] >= 0);
            copy16_async(ks + CP_TOKENS * LDC + at, v_cache + e, pg[i] >= 0);
#if KV_QUANT && PER_TOKEN_SCALES
            if (c % CHUNKS == 0) {
                copy4_async(sc + c / CHUNKS, k_scale + e / HEAD_DIM, pg[i] >= 0);
                copy4_async(sc + CP_TOKENS + c / CHUNKS, v_scale + e / HEAD_DIM, pg[i] >= 0);
            }
#endif
        }
    }
}

#if KV_QUANT
// A copier converts its staged codes (K rows, then V rows) into KV_T rows of LD.
__device__ inline void convert_tile(KV_T* dst, const unsigned char* stage, int cid)
{
    constexpr int QC = HEAD_DIM / 16;   // 16-code chunks per row
    for (int c = cid; c < 2 * CP_TOKENS * QC; c += CP_THREADS) {
        const int r = c / QC, col = (c % QC) * 16;   // rows 0 .. 2 TILE_T - 1: K then V
        convert_chunk(dst + r * LD + col, *reinterpret_cast<const uint4*>(stage + r * LDC + col));
    }
}
#endif

#endif  // DECODE_TC_TILES_CUH
