// assert.h for the CPU executor: a failed device assert() fails the launch with
// KernelAssertionError naming the thread and block (like CUDA's device-side assert).
// Re-includable, like the standard header, so that NDEBUG is honoured.
#include "../runtime.h"
#undef assert
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
#define assert(e) ((e) ? (void)0 : __pal_assert_fail(#e, __FILE__, __LINE__, __func__))
#endif
