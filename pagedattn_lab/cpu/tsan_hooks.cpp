// The hooks that -fsanitize=thread makes the compiler call (GCC's and Clang's ABI), in place
// of libtsan, which is never linked. Plain accesses go to pal::on_access with their call
// site; atomics simply happen (the shim's atomicAdd & co. report themselves once through
// __pal_note_atomic, so that a compare-and-swap loop counts as one atomic access).
#include "instrument.h"

#define PAL_PC ((uintptr_t)__builtin_return_address(0))
#define PAL_HOOK extern "C" PAL_HIDDEN

#define PAL_RW(N)                                                                           \
    PAL_HOOK void __tsan_read##N(void *a) { pal::on_access((uintptr_t)a, N, pal::ACC_READ, PAL_PC); } \
    PAL_HOOK void __tsan_write##N(void *a) { pal::on_access((uintptr_t)a, N, pal::ACC_WRITE, PAL_PC); } \
    PAL_HOOK void __tsan_unaligned_read##N(void *a)                                         \
    { pal::on_access((uintptr_t)a, N, pal::ACC_READ, PAL_PC); }                            \
    PAL_HOOK void __tsan_unaligned_write##N(void *a)                                        \
    { pal::on_access((uintptr_t)a, N, pal::ACC_WRITE, PAL_PC); }                           \
    PAL_HOOK void __tsan_volatile_read##N(void *a)                                          \
    { pal::on_access((uintptr_t)a, N, pal::ACC_READ, PAL_PC); }                            \
    PAL_HOOK void __tsan_volatile_write##N(void *a)                                         \
    { pal::on_access((uintptr_t)a, N, pal::ACC_WRITE, PAL_PC); }
PAL_RW(1)
PAL_RW(2)
PAL_RW(4)
PAL_RW(8)
PAL_RW(16)
#undef PAL_RW

PAL_HOOK void __tsan_read_range(void *a, unsigned long n)
{ pal::on_access((uintptr_t)a, (unsigned)n, pal::ACC_READ, PAL_PC); }
PAL_HOOK void __tsan_write_range(void *a, unsigned long n)
{ pal::on_access((uintptr_t)a, (unsigned)n, pal::ACC_WRITE, PAL_PC); }
// A kernel's memcpy, memmove and memset (the shim sends them here): counted as the 16-byte
// accesses of the copy loop a GPU thread runs for them, so that one thread's memcpy of a
// whole row counts as the stores it makes, not as one.
static void pieces(uintptr_t a, unsigned long n, int kind, uintptr_t pc)
{
    for (unsigned long i = 0; i < n; i += 16)
        pal::on_access(a + i, (unsigned)(n - i < 16 ? n - i : 16), kind, pc);
}
PAL_HOOK void *__tsan_memcpy(void *d, const void *s, unsigned long n)
{
    pieces((uintptr_t)s, n, pal::ACC_READ, PAL_PC);
    pieces((uintptr_t)d, n, pal::ACC_WRITE, PAL_PC);
    return memcpy(d, s, n);
}
PAL_HOOK void *__tsan_memmove(void *d, const void *s, unsigned long n)
{
    pieces((uintptr_t)s, n, pal::ACC_READ, PAL_PC);
    pieces((uintptr_t)d, n, pal::ACC_WRITE, PAL_PC);
    return memmove(d, s, n);
}
PAL_HOOK void *__tsan_memset(void *d, int c, unsigned long n)
{
    pieces((uintptr_t)d, n, pal::ACC_WRITE, PAL_PC);
    return memset(d, c, n);
}
PAL_HOOK void __tsan_init(void) {}
PAL_HOOK void __tsan_func_entry(void *) {}
PAL_HOOK void __tsan_func_exit(void) {}
PAL_HOOK void __tsan_vptr_update(void **, void *) {}
PAL_HOOK void __tsan_vptr_read(void **) {}
PAL_HOOK void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
PAL_HOOK void __tsan_atomic_signal_fence(int) {}

extern "C" void __pal_note_atomic(const volatile void *a, unsigned size)
{
    pal::on_access((uintptr_t)a, size, pal::ACC_ATOMIC, PAL_PC);
}

// The atomics themselves (memory order: always sequentially consistent, as CUDA's are
// at least as strong as the course needs).
#define SC __ATOMIC_SEQ_CST
#define PAL_ATOMICS(N, T)                                                                    \
    PAL_HOOK T __tsan_atomic##N##_load(const volatile T *a, int) { return __atomic_load_n(a, SC); } \
    PAL_HOOK void __tsan_atomic##N##_store(volatile T *a, T v, int) { __atomic_store_n(a, v, SC); } \
    PAL_HOOK T __tsan_atomic##N##_exchange(volatile T *a, T v, int)                          \
    { return __atomic_exchange_n(a, v, SC); }                                               \
    PAL_HOOK T __tsan_atomic##N##_fetch_add(volatile T *a, T v, int)                         \
    { return __atomic_fetch_add(a, v, SC); }                                                \
    PAL_HOOK T __tsan_atomic##N##_fetch_sub(volatile T *a, T v, int)                         \
    { return __atomic_fetch_sub(a, v, SC); }                                                \
    PAL_HOOK T __tsan_atomic##N##_fetch_and(volatile T *a, T v, int)                         \
    { return __atomic_fetch_and(a, v, SC); }                                                \
    PAL_HOOK T __tsan_atomic##N##_fetch_or(volatile T *a, T v, int)                          \
    { return __atomic_fetch_or(a, v, SC); }                                                 \
    PAL_HOOK T __tsan_atomic##N##_fetch_xor(volatile T *a, T v, int)                         \
    { return __atomic_fetch_xor(a, v, SC); }                                                \
    PAL_HOOK T __tsan_atomic##N##_fetch_nand(volatile T *a, T v, int)                        \
    { return __atomic_fetch_nand(a, v, SC); }                                               \
    PAL_HOOK int __tsan_atomic##N##_compare_exchange_strong(volatile T *a, T *c, T v, int, int) \
    { return __atomic_compare_exchange_n(a, c, v, false, SC, SC); }                        \
    PAL_HOOK int __tsan_atomic##N##_compare_exchange_weak(volatile T *a, T *c, T v, int, int) \
    { return __atomic_compare_exchange_n(a, c, v, true, SC, SC); }                         \
    PAL_HOOK T __tsan_atomic##N##_compare_exchange_val(volatile T *a, T c, T v, int, int)    \
    { __atomic_compare_exchange_n(a, &c, v, false, SC, SC); return c; }
PAL_ATOMICS(8, uint8_t)
PAL_ATOMICS(16, uint16_t)
PAL_ATOMICS(32, uint32_t)
PAL_ATOMICS(64, uint64_t)
#undef PAL_ATOMICS
#undef SC
