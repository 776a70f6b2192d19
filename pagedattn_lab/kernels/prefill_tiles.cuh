// The tile loop around the inner products, shared by the two tensor-core prefill kernels
// (prefill_tc.cu on WMMA, prefill_mma.cu on mma.sync): what a block computes (its work
// item), which keys each packed row and warp sees, the pipeline that stages K/V tiles from
// their pages into shared memory, and the softmax's 2^x. Included after prefill_tc_params.cuh
// and prefill_tc_pipeline.cuh.
#ifndef PREFILL_TILES_CUH
#define PREFILL_TILES_CUH

// A block's work item (one entry of the wrapper's work list) and its sequence. Packed rows
// rho = query * pack + h (see prefill_tc.cu's header); rows_total of them in the sequence.
struct PrefillJob {
    int rho0, head0, kv_head, q_begin, rows_total, pack, num_heads, causal, seq_len, first_pos;
    const int* table;                                    // the sequence's block-table row

    // The last key packed row rho may see, or -1 for a row past the sequence's queries.
    __device__ int key_limit(int rho) const
    {
        if (rho >= rows_total) return -1;
        return causal ? first_pos + rho / pack : seq_len - 1;
    }
    // Where packed row rho's q (and out) row starts.
    __device__ long long row_offset(int rho) const
    {
        return ((long long)(q_begin + rho / pack) * num_heads + head0 + rho % pack) * HEAD_DIM;
    }
};

__device__ inline PrefillJob prefill_job(const int* work, const int* qo_indptr,
                                         const int* seq_lens, const int* block_tables,
                                         int max_pages, int num_heads, int num_kv_heads,
                                         int pack, int causal)
{
    PrefillJob j;
    const int b = work[2 * blockIdx.x];
    j.rho0 = work[2 * blockIdx.x + 1];
    j.head0 = blockIdx.y * pack;                         // the block's first query head
    j.kv_head = j.head0 / (num_heads / num_kv_heads);
    j.q_begin = qo_indptr[b];
    const int q_len = qo_indptr[b + 1] - j.q_begin;
    j.seq_len = seq_lens[b];
    j.first_pos = j.seq_len - q_len;                     // position of query 0
    j.rows_total = q_len * pack;
    j.pack = pack;
    j.num_heads = num_heads;
    j.causal = causal;
    j.table = block_tables + (long long)b * max_pages;
    return j;
}

// A warp's share of the block's rows and keys: the block's key count kv_end, the warp's first
// packed row, whether it has any row, and the key limits of its first and last rows (limits
// grow with rho).
struct WarpKeys {
    int kv_end, first, min_lim, max_lim;
    bool has_rows;
};

__device__ inline WarpKeys warp_keys(const PrefillJob& job, int warp)
{
    WarpKeys wk;
    const int block_last = min(job.rho0 + Q_ROWS, job.rows_total) - 1;
    wk.kv_end = job.key_limit(block_last) + 1;
    wk.first = job.rho0 + warp * WARP_ROWS;
    wk.has_rows = wk.first < job.rows_total;
    wk.min_lim = job.key_limit(wk.first);
    wk.max_lim = job.key_limit(min(wk.first + WARP_ROWS, job.rows_total) - 1);
    return wk;
}

// K/V tiles from their pages into STAGES stages of shared memory (K rows at stage + r * LD_KV,
// V rows KV_TILE * LD_KV after), one group of copies per tile. Each key's cache slot is
// looked up once, a tile ahead, into a ring of STAGES * KV_TILE ints, in two halves so that
// the block-table load of tile t + STAGES is in flight while tile t is computed
// (lookup_begin before, lookup_end after): a 16-byte copy then costs a shared load and an
// address, not a division by the page size and a dependent table load. Keys at or past
// kv_end (the last key the block reads, plus one) are staged as zeros: a masked key times a
// NaN left in an unused slot would still be NaN.
struct KvPipeline {
    ELEM* kv;                       // the stages
    int* slots;                     // the ring: [STAGES][KV_TILE]
    const int* table;
    int page_size, kv_end;
    const CACHE_T* k_cache;
    const CACHE_T* v_cache;
    const float* k_scale;           // compressed pages only (kv_quant.cuh)
    const float* v_scale;
    int kv_head, num_kv_heads;
    int page_of[SLOTS_PER_THREAD];  // the one register kept across a tile's compute

    // A key is formed only for a slot of the tile (r < KV_TILE): the plan bounds the tile's
    // last key, k_first + KV_TILE - 1, within int32 (prefill_plan.check_int32_ranges); a
    // thread's slots past the tile would pass it (signed overflow) near that bound. A slot,
    // page x page_size + place, stays below (largest page read + 1) x page_size <= 2^31
    // (BatchPrefillWrapper's plan refuses more).
    __device__ void lookup_begin(int k_first)
    {
#pragma unroll
        for (int j = 0; j < SLOTS_PER_THREAD; ++j) {
            const int r = threadIdx.x + j * THREADS;
            page_of[j] = -1;                  // past the keys this block reads: zeros
            if (r < KV_TILE && k_first + r < kv_end)
                page_of[j] = table[(k_first + r) / page_size];
        }
    }
    __device__ void lookup_end(int k_first, int stage)
    {
        int* tile_slots = slots + stage * KV_TILE;
#pragma unroll
        for (int j = 0; j < SLOTS_PER_THREAD; ++j) {
            const int r = threadIdx.x + j * THREADS;
            if (r < KV_TILE)
                tile_slots[r] = page_of[j] < 0 ? -1
                                               : page_of[j] * page_size + (k_first + r) % page_size;
        }
    }
    // The copies of the tile whose slots are in the ring's `stage`, into that stage: one group.
    __device__ void stage(int stage)
    {
        ELEM* dst = kv + stage * STAGE_ELEMS;
        const int* tile_slots = slots + stage * KV_TILE;
#if KV_QUANT
        auto slot_of = [&](int r) -> long long { return tile_slots[r]; };
        stage_codes(dst, KV_TILE, k_cache, k_scale, slot_of, kv_head, num_kv_heads);
        stage_codes(dst + KV_TILE * LD_KV, KV_TILE, v_cache, v_scale, slot_of, kv_head,
                    num_kv_heads);
#else
        const int row_stride = num_kv_heads * HEAD_DIM;   // one token's K row
        stage_kv_rows(dst, tile_slots, k_cache + (long long)kv_head * HEAD_DIM,
                      v_cache + (long long)kv_head * HEAD_DIM, row_stride);
#endif
        copy_commit();
    }
    // After the Q tile's group: the slots of tiles 0 .. STAGES - 1, then the copies of tiles
    // 0 .. STAGES - 2, one group each (an empty group past the block's keys).
    __device__ void start()
    {
#pragma unroll
        for (int t = 0; t < STAGES; ++t) {
            lookup_begin(t * KV_TILE);
            lookup_end(t * KV_TILE, t);
        }
        __syncthreads();
#pragma unroll
        for (int t = 0; t < STAGES - 1; ++t) {
            if (t * KV_TILE < kv_end) stage(t);
            else copy_commit();
        }
    }
    // Tile `tile` (keys k0 ..): wait for its copies, one barrier (after it every warp is done
    // with tile - 1, whose stage then takes tile + STAGES - 1), and the first half of the
    // lookup of tile + STAGES. Returns the tile's K rows (V rows follow at KV_TILE * LD_KV).
    __device__ const ELEM* begin_tile(int tile, int k0)
    {
        copy_wait<STAGES - 2>();      // this thread's copies of this tile have landed
        __syncthreads();              // ... and everyone else's
        if (k0 + (STAGES - 1) * KV_TILE < kv_end) stage((tile + STAGES - 1) % STAGES);
        else copy_commit();           // an empty group keeps the count uniform
        lookup_begin(k0 + STAGES * KV_TILE);
        return kv + tile % STAGES * STAGE_ELEMS;
    }
    // After the tile's compute: its slots are used up; the ring's entry takes tile + STAGES.
    __device__ void end_tile(int tile, int k0)
    {
        lookup_end(k0 + STAGES * KV_TILE, tile % STAGES);
    }
};

__device__ inline KvPipeline kv_pipeline(ELEM* kv, int* slots, const PrefillJob& job,
                                         int page_size, int kv_end, const CACHE_T* k_cache,
                                         const CACHE_T* v_cache, const float* k_scale,
                                         const float* v_scale, int num_kv_heads)
{
    KvPipeline p;
    p.kv = kv;
    p.slots = slots;
    p.table = job.table;
    p.page_size = page_size;
    p.kv_end = kv_end;
    p.k_cache = k_cache;
    p.v_cache = v_cache;
    p.k_scale = k_scale;
    p.v_scale = v_scale;
    p.kv_head = job.kv_head;
    p.num_kv_heads = num_kv_heads;
    return p;
}

// The block's Q tile into shared memory (row r at dst + r * LD_KV; rows past the sequence's
// queries are zeros), one group of copies.
__device__ inline void stage_q(ELEM* dst, const ELEM* q, const PrefillJob& job)
{
    stage_rows(dst, Q_ROWS, [&](int r) -> const ELEM* {
        const int rho = job.rho0 + r;
        return rho < job.rows_total ? q + job.row_offset(rho) : nullptr;
    });
    copy_commit();
}

#endif  // PREFILL_TILES_CUH
