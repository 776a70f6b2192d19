// The tensor-core decode kernels' (decode_tc.cu, decode_mma.cu) work and tile staging: which
// tokens and query heads a block takes, block-table lookups, asynchronous K/V copies in a
// STAGES-deep pipeline and the conversion of staged codes. Include after the kernel's layout
// header (which says where chunk c of staged row r goes: stage_at) and kv_convert.cuh.
// decode_mma.cu streams a range of segments (decode_rows, TileCursor, start_stream,
// next_stream_tile); decode_tc.cu (lesson 09's kernel) takes one work item per block and
// spells its pipeline out with tile_pages, copy_tile and convert_tile, because calling shared
// steps changed its compiled code for some compressed-page shapes (nvcc 13, sm_90).
#ifndef DECODE_TC_TILES_CUH
#define DECODE_TC_TILES_CUH

// A block's rows (block_rows() = KV head x row chunk): KV head kvh and its query heads
// h0 .. h0 + nh - 1, the rows of Q.
struct DecodeRows {
    int kvh, h0, nh;
};

__device__ inline DecodeRows decode_rows(int num_heads, int num_kv_heads, int rows_per_block)
{
    DecodeRows r;
    const int group = num_heads / num_kv_heads;
    const int chunks = grid_rows() / num_kv_heads;
    r.kvh = block_rows() / chunks;
    r.h0 = r.kvh * group + (block_rows() % chunks) * rows_per_block;   // first query head
    r.nh = min(rows_per_block, r.kvh * group + group - r.h0);        // query heads here
    return r;
}

// The work of block x = block_work() (the same for every row block): segments seg_ptr[x]
// .. seg_ptr[x + 1] - 1 of the plan's list (decode_work.py), each a piece of one sequence, int4 (b,
// first token, end token, part | parts << 16), its tiles starting at its first token. A
// block streams its segments' tiles back to back: balanced ranges cross sequences, one work
// item per block is a range of one segment. Part p of the sequence's `parts` (1: the block
// writes the output itself) names its partial-state slot.
// A cursor over those tiles: the tile at token t0 of segment seg, of sequence b (seg == last:
// past the range; every field uniform over the block).
struct TileCursor {
    int seg, last, b, start, t0, end, parts;
};

__device__ inline void open_segment(TileCursor& c, const int* segs)
{
    const int4 s = reinterpret_cast<const int4*>(segs)[c.seg];
    c.b = s.x;
    c.start = c.t0 = s.y;
    c.end = s.z;
    c.parts = s.w;
}

__device__ inline TileCursor first_tile(const int* segs, const int* seg_ptr)
{
    TileCursor c;
    c.seg = seg_ptr[block_work()];
    c.last = seg_ptr[block_work() + 1];
    c.b = c.start = c.t0 = c.end = c.parts = 0;
    if (c.seg < c.last) open_segment(c, segs);
    return c;
}

__device__ inline bool tile_valid(const TileCursor& c) { return c.seg < c.last; }
__device__ inline bool last_of_segment(const TileCursor& c) { return c.t0 + TILE_T >= c.end; }
__device__ inline int segment_part(const TileCursor& c) { return c.parts & 0xffff; }
__device__ inline int segment_parts(const TileCursor& c) { return c.parts >> 16; }

__device__ inline void advance_tile(TileCursor& c, const int* segs)
{
    c.t0 += TILE_T;
    if (c.t0 >= c.end && ++c.seg < c.last) open_segment(c, segs);
}

// One tile of K and V (tokens t0 .. t0 + TILE_T - 1) in two steps: the page ids of this
// thread's 16-byte chunks (-1 past the end: zeros, nothing read), read from the block table
// one iteration before the copies need them (an L2 round trip off the path between barrier
// and arithmetic); then the copies.
// COPY_SLOTS (default: compressed pages): copy_tile addresses a chunk by its token slot (page
// id x page_size + place in the page, 32 bits unsigned) times the slot's bytes, one wide
// multiply-add, instead of a 64-bit multiply-add chain with sign extensions and a branch
// around it for page id -1. Slots fit in 32 bits: the caches hold at least 64 bytes per slot
// and KV head (codes at head_dim 64 and more), 256 GB at 2^32 slots. The page ids stay as
// loaded until the copies use them: arithmetic on them here would wait for the table's load.
#ifndef COPY_SLOTS
#define COPY_SLOTS (KV_QUANT != 0)
#endif
constexpr int TILE_COPIES = (CP_TOKENS * CHUNKS + CP_THREADS - 1) / CP_THREADS;   // per thread

__device__ inline void tile_pages(int (&pg)[TILE_COPIES], const int* table, int t0, int end,
                                  int page_size, int page_shift, int cid)
{
#pragma unroll
    for (int i = 0; i < TILE_COPIES; ++i) {
        const int c = i * CP_THREADS + cid;
        pg[i] = -1;   // a token past the end is never looked up
        // the token only for a chunk of the tile: the plan bounds the tile's tokens within
        // int32 (decode_work.tc_token_reach); a thread's chunks past it could pass 2^31 - 1
        if (CP_TOKENS * CHUNKS % CP_THREADS == 0 || c < CP_TOKENS * CHUNKS) {
            const int t = t0 + c / CHUNKS;
            if (t < end) pg[i] = table[page_shift >= 0 ? (t >> page_shift) : (t / page_size)];
        }
    }
}

// base + slot x bytes in one wide multiply-add (mad.wide.u32: the compiler otherwise adds
// the base pointer separately, two more instructions per address)
__device__ inline const void* slot_address(const void* base, unsigned slot, unsigned bytes)
{
#ifdef __CUDA_ARCH__
    unsigned long long a;
    asm("mad.wide.u32 %0, %1, %2, %3;\n"
        : "=l"(a) : "r"(slot), "r"(bytes), "l"(reinterpret_cast<unsigned long long>(base)));
    return reinterpret_cast<const void*>(a);
#else
    return static_cast<const unsigned char*>(base) + (unsigned long long)slot * bytes;
#endif
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
#if COPY_SLOTS
    // A chunk's address: its column's address in slot 0 + slot x the slot's bytes, one wide
    // multiply-add each for K and V (page id -1: nothing read, from slot 0's address). Where
    // the threads divide into whole rows (EVEN), a thread copies one chunk column, in rows
    // cid / CHUNKS + i x (CP_THREADS / CHUNKS), so that its column addresses and stage
    // offsets are the same (+ a constant) every copy.
    constexpr bool EVEN = CP_THREADS % CHUNKS == 0;
    const unsigned slot_bytes = (unsigned)(row_stride * (long long)sizeof(CACHE_T));
    const unsigned u = (unsigned)cid;
#pragma unroll
    for (int i = 0; i < TILE_COPIES; ++i) {
        const unsigned c = i * CP_THREADS + u;
        const unsigned r = EVEN ? i * (CP_THREADS / CHUNKS) + u / CHUNKS : c / CHUNKS;
        const unsigned ch = EVEN ? u % CHUNKS : c % CHUNKS;
        if (CP_TOKENS * CHUNKS % CP_THREADS == 0 || c < CP_TOKENS * CHUNKS) {
            const bool valid = pg[i] >= 0;
            const int t = t0 + (int)r;
            const int in_page = page_shift >= 0 ? (t & (page_size - 1)) : (t % page_size);
            const unsigned slot = valid ? (unsigned)pg[i] * (unsigned)page_size + (unsigned)in_page
                                        : 0u;
            const long long col = head_off + ch * CHUNK_ELEMS;
            const int at = stage_at(r, ch);
            copy16_async(ks + at, slot_address(k_cache + col, slot, slot_bytes), valid);
            copy16_async(ks + CP_TOKENS * LDC + at, slot_address(v_cache + col, slot, slot_bytes),
                         valid);
#if KV_QUANT && PER_TOKEN_SCALES   // scale index: slot x num_kv_heads + kv_head
            if (ch == 0) {
                const long long si = (long long)slot * (row_stride / HEAD_DIM)
                                     + head_off / HEAD_DIM;
                copy4_async(sc + r, k_scale + si, valid);
                copy4_async(sc + CP_TOKENS + r, v_scale + si, valid);
            }
#endif
        }
    }
#else
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
#endif
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

// Q of sequence b: the block's query heads as rows 0 .. nh - 1 of qs (row stride LD), copied
// asynchronously by every thread of the block (in the group of the segment's first tile);
// the rows below them are zeroed once for all Q buffers (zero_q_pad). KV_FUSE: a row's QD
// dims at its fused head's place, zeros (copies of nothing) elsewhere.
__device__ inline void copy_q_rows(KV_T* qs, const KV_T* q, int b, const DecodeRows& r,
                                   int num_heads)
{
    constexpr int QCHUNKS = HEAD_DIM * 2 / 16, OWN = QCHUNKS / KV_FUSE;
    for (int c = threadIdx.x; c < r.nh * QCHUNKS; c += TC_THREADS) {
        const int row = c / QCHUNKS, ch = c % QCHUNKS;
        copy16_async(qs + row * LD + ch * 8,
                     q + ((long long)b * num_heads + r.h0 + row) * QD
                     + (KV_FUSE == 1 ? ch : ch % OWN) * 8,
                     KV_FUSE == 1 || ch / OWN == fused_part(row, r.nh));
    }
}

__device__ inline void zero_q_pad(KV_T* qbufs, int nbufs, int nh)
{
    constexpr int QCHUNKS = HEAD_DIM * 2 / 16;
    const int pad = QROWS - nh;
    for (int c = threadIdx.x; c < nbufs * pad * QCHUNKS; c += TC_THREADS) {
        const int buf = c / (pad * QCHUNKS), r = nh + c / QCHUNKS % pad;
        *reinterpret_cast<uint4*>(qbufs + (buf * QROWS + r) * LD + (c % QCHUNKS) * 8) =
            make_uint4(0u, 0u, 0u, 0u);
    }
}

// The pipeline of a copier's tiles (the block's, or with WARP_PIPE the warp's) along a
// block's range. TileGeom: where the tiles are (cid: this thread's place among the copier's
// CP_THREADS, cp_off: the copier's first token of a tile). The cursor `ahead` is the next
// tile to copy, its page ids in pg (read one iteration before the copies need them). The
// first STAGES - 1 tiles start loading before anything else. Every thread commits one group
// per tile, an empty one past the last tile too, so that "wait until at most N groups are in
// flight" means the same tile for every thread. The Q of a segment is copied into Q buffer
// seg % STAGES in the group of the segment's first tile: at most STAGES segments are live
// (the one computed and those of the tiles in flight), and each segment ends with a block
// barrier, so a buffer is free again when it is reused.
struct TileGeom {
    int max_pages, page_size, page_shift;
    long long page_stride, row_stride, head_off;
    int cid, cp_off;
};

// A block's tile geometry for KV head kvh; `slice`: the calling warp's slice of TW tokens.
// WARP_PIPE: each warp copies its own tokens of a tile (cid = its lane), else the whole block
// copies the tile (cid = the thread).
__device__ inline TileGeom tile_geom(int max_pages, int page_size, int page_shift,
                                     int num_kv_heads, int kvh, int slice)
{
    TileGeom geo;
    geo.max_pages = max_pages;
    geo.page_size = page_size;
    geo.page_shift = page_shift;
    geo.row_stride = (long long)num_kv_heads * HEAD_DIM;
    geo.page_stride = (long long)page_size * geo.row_stride;
    geo.head_off = (long long)kvh * HEAD_DIM;
#if WARP_PIPE
    geo.cid = threadIdx.x % 32;
    geo.cp_off = slice * TW;
#else
    geo.cid = threadIdx.x;
    geo.cp_off = 0;
#endif
    return geo;
}

__device__ inline void lookup_tile(int (&pg)[TILE_COPIES], const int* tables,
                                   const TileCursor& c, const TileGeom& g)
{
    tile_pages(pg, tables + (long long)c.b * g.max_pages, c.t0 + g.cp_off, c.end, g.page_size,
               g.page_shift, g.cid);
}

__device__ inline void issue_tile(int slot, unsigned char* stages, float* scales, KV_T* qbufs,
                                  const int (&pg)[TILE_COPIES], const TileCursor& c,
                                  const CACHE_T* k_cache, const CACHE_T* v_cache,
                                  const float* k_scale, const float* v_scale, const KV_T* q,
                                  const TileGeom& g, const DecodeRows& rows, int num_heads)
{
    copy_tile(stages + slot * STAGE_BYTES, scales + slot * 2 * CP_TOKENS, k_cache, v_cache,
              k_scale, v_scale, pg, c.t0 + g.cp_off, g.page_size, g.page_shift, g.page_stride,
              g.row_stride, g.head_off, g.cid);
    if (c.t0 == c.start)
        copy_q_rows(qbufs + (c.seg % STAGES) * QROWS * LD, q, c.b, rows, num_heads);
}

// PRIME_STAGES (1, the default; 0 to compare): the stream's start fills every stage buffer
// (STAGES tiles in flight, not STAGES - 1), and the first step waits for tile 0 alone and
// issues nothing: the wave's first request is twice the bytes at two stages. Meant to keep the
// memory busy while the first tiles land (~6 us of every launch); measured level within 1%
// (benchmarks/NOTES.md, "Fixed costs (session 10)"), and on since the GPU check ran so.
#ifndef PRIME_STAGES
#define PRIME_STAGES 1
#endif
constexpr int STREAM_PRIMED = PRIME_STAGES ? STAGES : STAGES - 1;   // tiles issued at the start

// The stream's start: the Q buffers' pad rows zeroed, the first STREAM_PRIMED tiles issued
// (each its group), the page ids of the next one read.
__device__ inline void start_stream(unsigned char* stages, float* scales, KV_T* qbufs,
                                    int (&pg)[TILE_COPIES], TileCursor& ahead, const int* segs,
                                    const int* tables, const CACHE_T* k_cache,
                                    const CACHE_T* v_cache, const float* k_scale,
                                    const float* v_scale, const KV_T* q, const TileGeom& g,
                                    const DecodeRows& rows, int num_heads)
{
    zero_q_pad(qbufs, STAGES, rows.nh);
#pragma unroll
    for (int s = 0; s < STREAM_PRIMED; ++s) {
        if (tile_valid(ahead)) {
            lookup_tile(pg, tables, ahead, g);
            issue_tile(s, stages, scales, qbufs, pg, ahead, k_cache, v_cache, k_scale, v_scale,
                       q, g, rows, num_heads);
            advance_tile(ahead, segs);
        }
        copy_commit();
    }
    if (tile_valid(ahead)) lookup_tile(pg, tables, ahead, g);
}

// Before tile i is computed: wait for it, then start the tile `ahead` (tile i + STAGES - 1)
// into the buffer of tile i - 1 and read the page ids of the tile after.
__device__ inline void next_stream_tile(int i, unsigned char* stages, float* scales,
                                        KV_T* qbufs, int (&pg)[TILE_COPIES], TileCursor& ahead,
                                        const int* segs, const int* tables,
                                        const CACHE_T* k_cache, const CACHE_T* v_cache,
                                        const float* k_scale, const float* v_scale,
                                        const KV_T* q, const TileGeom& g,
                                        const DecodeRows& rows, int num_heads)
{
    if (PRIME_STAGES && i == 0) {   // tile STAGES - 1 is in flight already: wait for tile 0
        copy_wait<STAGES - 1>();
#if WARP_PIPE
        __syncwarp();
#else
        __syncthreads();
#endif
        return;
    }
    copy_wait<STAGES - 2>();   // tile i has landed (this thread's copies) ...
#if WARP_PIPE
    __syncwarp();              // ... the warp's; and the warp is done with tile i - 1
#else
    __syncthreads();           // ... everyone's; and every warp is done with tile i - 1
#endif
    if (tile_valid(ahead)) {
        issue_tile((i + STAGES - 1) % STAGES, stages, scales, qbufs, pg, ahead, k_cache,
                   v_cache, k_scale, v_scale, q, g, rows, num_heads);
        advance_tile(ahead, segs);
    }
    copy_commit();
    if (tile_valid(ahead)) lookup_tile(pg, tables, ahead, g);
}

#endif  // DECODE_TC_TILES_CUH
