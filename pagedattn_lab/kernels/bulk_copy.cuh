// Bulk copies (compute capability 9.0): one instruction copies a whole contiguous run of bytes
// (a multiple of 16, both ends 16-byte aligned) from global to shared memory through the copy
// engine (the TMA unit), and counts the bytes it delivers on a shared-memory barrier
// (mbarrier) that the consumers wait on. Against cp.async's 16 bytes per instruction, a K or V
// row of 128-256 bytes is one instruction and one address, not 8-16.
//
// The barrier of a stage buffer: set up once for `arrivals` threads per phase; each use, every
// one of those threads arrives and announces the bytes its own copies will deliver
// (bar_expect_bytes), then issues them; the phase completes when every thread has arrived and
// every announced byte has landed; waiters name the phase by its parity (uses so far, mod 2).
// Shared memory written by ordinary stores and then overwritten by bulk copies needs
// fence_async_writes() by the writers before the barrier that orders them (the copy engine is
// another "proxy" of the memory model).
// The CPU executor runs no PTX: there a bulk copy is a synchronous memcpy and the barrier
// calls do nothing, which is what they amount to once the copies have landed.
#ifndef PAGEDATTN_LAB_BULK_COPY_CUH
#define PAGEDATTN_LAB_BULK_COPY_CUH

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define BULK_COPY_PTX 1
#endif

__device__ inline void bar_init(unsigned long long* bar, int arrivals)
{
#ifdef BULK_COPY_PTX
    const unsigned b = static_cast<unsigned>(__cvta_generic_to_shared(bar));
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(b), "r"(arrivals));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
    *bar = static_cast<unsigned long long>(arrivals);
#endif
}

__device__ inline void bar_expect_bytes(unsigned long long* bar, unsigned bytes)
{
#ifdef BULK_COPY_PTX
    const unsigned b = static_cast<unsigned>(__cvta_generic_to_shared(bar));
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n"
                 :: "r"(b), "r"(bytes) : "memory");
#endif
}

__device__ inline void bar_wait(unsigned long long* bar, unsigned parity)
{
#ifdef BULK_COPY_PTX
    const unsigned b = static_cast<unsigned>(__cvta_generic_to_shared(bar));
    unsigned done = 0;
    while (!done) {
        asm volatile("{\n .reg .pred p;\n"
                     " mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(b), "r"(parity) : "memory");
    }
#endif
}

__device__ inline void bulk_copy(void* dst, const void* src, unsigned bytes,
                                 unsigned long long* bar)
{
#ifdef BULK_COPY_PTX
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    const unsigned b = static_cast<unsigned>(__cvta_generic_to_shared(bar));
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1], %2, [%3];\n"
                 :: "r"(d), "l"(src), "r"(bytes), "r"(b) : "memory");
#else
    const unsigned char* s = static_cast<const unsigned char*>(src);
    unsigned char* t = static_cast<unsigned char*>(dst);
    for (unsigned i = 0; i < bytes; i += 16)
        *reinterpret_cast<uint4*>(t + i) = *reinterpret_cast<const uint4*>(s + i);
#endif
}

__device__ inline void fence_async_writes()
{
#ifdef BULK_COPY_PTX
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

#endif  // PAGEDATTN_LAB_BULK_COPY_CUH
