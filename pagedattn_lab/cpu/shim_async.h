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
// executor's NaN poison or the previous tile. The race check also counts the copy as a
// write when it is issued (see __pal_cp_async_at).
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
    Queue &q = queues[__pal_thread_linear()];
    if (q.serial != __pal_block_serial) {
        q.serial = __pal_block_serial;
        q.count = q.committed = 0;
    }
    return q;
}

// Ordinary loads and stores (a 16-byte copy as one 16-byte access, as on the GPU; zeros too,
// not memset), so that the instrumented build's race check and access counts see them.
inline void land(const Copy &c)
{
    if (c.bytes == 16) {
        *static_cast<uint4 *>(c.dst) =
            c.valid ? *static_cast<const uint4 *>(c.src) : make_uint4(0u, 0u, 0u, 0u);
        return;
    }
    for (unsigned i = 0; i < c.bytes / 4; ++i)
        static_cast<unsigned *>(c.dst)[i] = c.valid ? static_cast<const unsigned *>(c.src)[i] : 0u;
}

}  // namespace __pal_async

// cp.async of `bytes` (4, 8 or 16) from global `src` to shared `dst`; zeros when !valid.
// The data lands at the wait; the race check also sees the write now, since a GPU may land
// it any time from here (a copy into a buffer other threads still read is a race).
inline void __pal_cp_async_at(const char *file, int line, void *dst, const void *src,
                              unsigned bytes, bool valid)
{
    __pal_async::Queue &q = __pal_async::mine();
    if (q.count == __pal_async::MAX_PENDING)
        __pal_assert_fail("at most 256 asynchronous copies in flight per thread (the CPU "
                          "executor's limit): wait for older groups first",
                          file, line, "cp.async");
    __pal_race_note_write(dst, bytes);
    q.copies[q.count++] = __pal_async::Copy{dst, src, bytes, q.committed, valid};
}
#define __pal_cp_async(...) __pal_cp_async_at(__FILE__, __LINE__, __VA_ARGS__)

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
