// Instrumented launches of the CPU executor: access counting (instrument.cpp) and the
// shared-memory race check (racecheck.cpp). Internal to the runtime.
//
// The kernel is compiled with -fsanitize=thread, which makes the compiler call a hook
// (__tsan_read4(addr), __tsan_write8(addr), ...) before every memory access that is not
// provably private (tsan_hooks.cpp). Libtsan itself is never linked: our hooks replace it.
// The hooks pass the address, size, kind and call site here; everything outside shared
// memory, the array arguments and the kernel's own variables (pal_config.vars) is ignored
// (the stack, the built-in variables) but for the bytes just before an array in its first
// page (a checked launch's slack), where an access fails the thread as a fault would.
#ifndef PAGEDATTN_LAB_INSTRUMENT_H
#define PAGEDATTN_LAB_INSTRUMENT_H

#include "scheduler.h"

namespace pal {

enum { ACC_READ = 0, ACC_WRITE = 1, ACC_ATOMIC = 2 };

// Every instrumented access of a kernel thread (pc: the call site in the kernel's code).
void on_access(uintptr_t addr, unsigned size, int kind, uintptr_t pc);

// The race check (racecheck.cpp).
void race_worker_begin();
void race_worker_end();
void race_block_begin();
void race_barrier();
void race_syncwarp(int warp, unsigned mask);
void race_access(int region, uintptr_t offset, uintptr_t addr, unsigned size, int kind,
                 uintptr_t pc);

// Library-relative address of code or data in the kernel's shared library (for addr2line).
uint64_t lib_offset(uintptr_t addr);

}  // namespace pal

#endif
