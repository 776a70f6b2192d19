// Asynchronous copies (cp.async) for the CPU executor, with the GPU's visibility rules.
//
// On the GPU a cp.async copy lands in shared memory at some time before the issuing thread's
// cp.async.wait_group that covers its group, and other threads may rely on it only after
// that wait and a barrier. A synchronous copy here would hide the two classic mistakes of a
// copy pipeline (reading a tile before its group was waited for; another thread's copies
// read after the wait with no __syncthreads() between). So each thread queues its copies;
// __pal_cp_async_commit() closes a group; __pal_cp_async_wait(n) performs, in issue order,
// the copies of every committed group but the n most recent (as cp.async.wait_group n, which
// leaves copies not yet committed in flight). The copy is made by the waiting thread
// at the wait, so the race check and the access counts see its global read and shared write
// there (the line of the wait), and a tile read too early holds what was there before: the
// executor's NaN poison or the previous tile.
//
// kernels/common.cuh and kv_convert.cuh call these on the CPU in place of the PTX.
#ifndef PAGEDATTN_LAB_SHIM_ASYNC_H
#define PAGEDATTN_LAB_SHIM_ASYNC_H

namespace __pal_async {

enum { MAX_PENDING = 256 };   // copies one thread may have in flight

struct Copy {
    void *dst;
    const void *src;
    unsigned bytes, group;
    bool valid;
};

// Per linear thread id, per worker process (blocks of one worker run one after another;
// `serial` tells a queue left by an earlier block, whose copies never land, from this one's).
struct Queue {
    unsigned long long serial;
    unsigned count, committed;
    Copy copies[MAX_PENDING];
};
static Queue queues[PAL_MAX_THREADS];

inline Queue &mine()
{
    Queue &q = queues[threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)];
    if (q.serial != __pal_block_serial) {
        q.serial = __pal_block_serial;
        q.count = q.committed = 0;
    }
    return q;
}

inline void land(const Copy &c)
{
    if (!c.valid) {
        memset(c.dst, 0, c.bytes);
        return;
    }
    // Element by element (16-byte copies as four words), so that the instrumented build
    // sees ordinary loads and stores.
    if (c.bytes == 16) {
        *static_cast<uint4 *>(c.dst) = *static_cast<const uint4 *>(c.src);
    } else {
        for (unsigned i = 0; i < c.bytes / 4; ++i)
            static_cast<unsigned *>(c.dst)[i] = static_cast<const unsigned *>(c.src)[i];
    }
}

}  // namespace __pal_async

// cp.async of `bytes` (4, 8 or 16) from global `src` to shared `dst`; zeros when !valid.
inline void __pal_cp_async(void *dst, const void *src, unsigned bytes, bool valid)
{
    __pal_async::Queue &q = __pal_async::mine();
    if (q.count == __pal_async::MAX_PENDING)
        __pal_assert_fail("at most 256 asynchronous copies in flight per thread (the CPU "
                          "executor's limit): wait for older groups first",
                          __FILE__, __LINE__, "cp.async");
    q.copies[q.count++] = __pal_async::Copy{dst, src, bytes, q.committed, valid};
}

// cp.async.commit_group: the copies issued since the last commit form a group.
inline void __pal_cp_async_commit() { ++__pal_async::mine().committed; }

// cp.async.wait_group n: every committed group but the n most recent has landed.
inline void __pal_cp_async_wait(unsigned n)
{
    __pal_async::Queue &q = __pal_async::mine();
    const unsigned done = q.committed > n ? q.committed - n : 0;   // groups 0 .. done - 1
    unsigned kept = 0;
    for (unsigned i = 0; i < q.count; ++i) {
        if (q.copies[i].group < done) __pal_async::land(q.copies[i]);
        else q.copies[kept++] = q.copies[i];
    }
    q.count = kept;
}

#endif
