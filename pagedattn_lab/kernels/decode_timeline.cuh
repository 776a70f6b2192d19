// Per-block timeline marks for diagnosis (decode_mma.cu and decode_mma_rows.cu compiled with
// -DTIMELINE=1; benchmarks/explore_mqa.py, NOTES.md "Fixed costs (session 10)"): thread 0 of
// the blocks of the first rows (block_rows() == 0) writes %globaltimer and clock64 marks as u64
// [work block][16] through the kernel's k_scale argument (fp16 pages only, where the kernel
// never reads it): times at entry (0), first tile landed (1), the last segment's last tile
// done (2) and end (3), their clocks at 8-11; the SM (4), merged (5), tiles (6); the rows kernel
// also its segments (7) and its first segment's end (12). Off (the default), the marks compile
// to nothing.
#ifndef DECODE_TIMELINE_CUH
#define DECODE_TIMELINE_CUH

#ifndef TIMELINE
#define TIMELINE 0
#endif
#if TIMELINE
__device__ inline unsigned long long tl_now()
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ inline unsigned tl_smid()
{
    unsigned s;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
    return s;
}
#define TL_MARK(k, v) do { if (threadIdx.x == 0 && block_rows() == 0) \
    reinterpret_cast<unsigned long long*>(const_cast<float*>(k_scale))[block_work() * 16 + (k)] = \
        (unsigned long long)(v); } while (0)
#define TL_TIME(k) do { TL_MARK(k, tl_now()); TL_MARK((k) + 8, clock64()); } while (0)
#else
#define TL_MARK(k, v) do {} while (0)
#define TL_TIME(k) do {} while (0)
#endif

#endif  // DECODE_TIMELINE_CUH
