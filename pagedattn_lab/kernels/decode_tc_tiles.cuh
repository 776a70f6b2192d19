// The tensor-core decode kernels' (decode_tc.cu, decode_mma.cu) work items and tile staging:
// which tokens and query heads a block takes, block-table lookups, asynchronous K/V copies in
// a STAGES-deep pipeline and the conversion of staged codes. Include after the kernel's layout
// header (which says where chunk c of staged row r goes: stage_at) and kv_convert.cuh.
// decode_mma.cu calls decode_item, stage_q_rows, start_tiles and next_tile; decode_tc.cu
// (lesson 09's kernel) still spells those steps out, because calling them changed its
// compiled code for some compressed-page shapes (nvcc 13, sm_90), and this move was to leave
// every kernel's machine code as it was.
#ifndef DECODE_TC_TILES_CUH
#define DECODE_TC_TILES_CUH

// A block's work item (the plan's work list; blockIdx.y = KV head x row chunk): tokens
// [start, end) of sequence b, partition part of its nparts, in ntiles tiles; KV head kvh and
// its query heads h0 .. h0 + nh - 1, the rows of Q.
struct DecodeItem {
    int b, part, start, end, nparts, ntiles, kvh, h0, nh;
};

__device__ inline DecodeItem decode_item(const int* work, const int* seq_lens, int part_len,
                                         int num_heads, int num_kv_heads, int rows_per_block)
{
    DecodeItem it;
    it.b = work[2 * blockIdx.x];
    it.part = work[2 * blockIdx.x + 1];
    const int seq_len = seq_lens[it.b];
    it.start = it.part * part_len;
    it.end = min(seq_len, it.start + part_len);
    it.nparts = (seq_len + part_len - 1) / part_len;
    it.ntiles = (it.end - it.start + TILE_T - 1) / TILE_T;
    const int group = num_heads / num_kv_heads;
    const int chunks = gridDim.y / num_kv_heads;
    it.kvh = blockIdx.y / chunks;
    it.h0 = it.kvh * group + (blockIdx.y % chunks) * rows_per_block;   // first query head
    it.nh = min(rows_per_block, it.kvh * group + group - it.h0);       // query heads here
    return it;
}

// Q: the block's query heads as rows of qs (row stride LD), zero rows below them.
__device__ inline void stage_q_rows(KV_T* qs, const KV_T* q, const DecodeItem& it, int num_heads)
{
    constexpr int QCHUNKS = HEAD_DIM * 2 / 16;
    for (int c = threadIdx.x; c < ROWS * QCHUNKS; c += TC_THREADS) {
        const int r = c / QCHUNKS, col = c % QCHUNKS;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r < it.nh)
            v = *reinterpret_cast<const uint4*>(
                q + ((long long)it.b * num_heads + it.h0 + r) * HEAD_DIM + col * 8);
        *reinterpret_cast<uint4*>(qs + r * LD + col * 8) = v;
    }
}

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

// The pipeline of a copier's tiles (the block's, or with WARP_PIPE the warp's: cid is this
// thread's place among its CP_THREADS, cp_off its first token of a tile) into its STAGES
// stage buffers `stages` and per-token scales `scales`; pg: the page ids of the next tile.
// (Scalar arguments, not a struct: the kernel's __restrict__ pointers would lose that
// qualifier in a struct, and the compiled code would change.)
// The first STAGES - 1 tiles start loading before anything else. Every thread commits one
// group per tile, an empty one past the last tile too, so that "wait until at most N groups
// are in flight" means the same tile for every thread.
__device__ inline void start_tiles(unsigned char* stages, float* scales, int (&pg)[TILE_COPIES],
                                   const int* table, const CACHE_T* k_cache,
                                   const CACHE_T* v_cache, const float* k_scale,
                                   const float* v_scale, int start, int end, int ntiles,
                                   int page_size, int page_shift, long long page_stride,
                                   long long row_stride, long long head_off, int cid, int cp_off)
{
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ntiles) {
            tile_pages(pg, table, start + s * TILE_T + cp_off, end, page_size, page_shift, cid);
            copy_tile(stages + s * STAGE_BYTES, scales + s * 2 * CP_TOKENS, k_cache, v_cache,
                      k_scale, v_scale, pg, start + s * TILE_T + cp_off, page_size, page_shift,
                      page_stride, row_stride, head_off, cid);
        }
        copy_commit();
    }
    if (STAGES - 1 < ntiles)
        tile_pages(pg, table, start + (STAGES - 1) * TILE_T + cp_off, end, page_size,
                   page_shift, cid);
}

// Before tile i is computed: wait for it, then start tile i + STAGES - 1 into the buffer of
// tile i - 1 (its page ids were read during the last iteration) and read the page ids of the
// tile after. (A template, instantiated only where a kernel calls it: decode_tc.cu does
// not, and a plain inline definition here changed decode_tc.cu's compiled code.)
template <int IN_FLIGHT = STAGES - 2>
__device__ inline void next_tile(int i, unsigned char* stages, float* scales,
                                 int (&pg)[TILE_COPIES], const int* table,
                                 const CACHE_T* k_cache, const CACHE_T* v_cache,
                                 const float* k_scale, const float* v_scale, int start, int end,
                                 int ntiles, int page_size, int page_shift, long long page_stride,
                                 long long row_stride, long long head_off, int cid, int cp_off)
{
    const int nt = i + STAGES - 1;
    copy_wait<IN_FLIGHT>();   // tile i has landed (this thread's copies) ...
#if WARP_PIPE
    __syncwarp();              // ... the warp's; and the warp is done with tile i - 1
#else
    __syncthreads();           // ... everyone's; and every warp is done with tile i - 1
#endif
    if (nt < ntiles)
        copy_tile(stages + (nt % STAGES) * STAGE_BYTES, scales + (nt % STAGES) * 2 * CP_TOKENS,
                  k_cache, v_cache, k_scale, v_scale, pg, start + nt * TILE_T + cp_off,
                  page_size, page_shift, page_stride, row_stride, head_off, cid);
    copy_commit();
    if (nt + 1 < ntiles)
        tile_pages(pg, table, start + (nt + 1) * TILE_T + cp_off, end, page_size, page_shift, cid);
}

#endif  // DECODE_TC_TILES_CUH
