// The handlers of the compiler's checks on kernel code (kernel_checks.py's flags, in the
// layout GCC and Clang share with their sanitizer library, which is not linked): an index
// past an array whose size the compiler knows (a local `float acc[8]`, a static __shared__
// `float s[32]`), and a shift by a negative amount or by at least the value's width. Each
// fails the launch, naming the thread, the line and the values (report.py words it). This
// file is compiled without the checks (the compiler declares these names itself there).
#include <stdio.h>
#include "scheduler.h"

using namespace pal;

namespace {

struct SourceLocation { const char *file; uint32_t line, column; };
struct TypeDescriptor { uint16_t kind, info; char name[1]; };   // name: "'float [8]'"
struct OutOfBoundsData { SourceLocation loc; const TypeDescriptor *array, *index; };
struct ShiftData { SourceLocation loc; const TypeDescriptor *lhs, *rhs; };

// An integer operand's value: inline when it fits a pointer (kind 0: integer; info: log2 of
// its width in bits << 1 | signed). A wider one is passed by address: read its low 64 bits.
int64_t int_value(const TypeDescriptor *t, uintptr_t handle)
{
    if (t->kind != 0) return 0;
    const unsigned bits = 1u << (t->info >> 1);
    const uint64_t raw = bits <= 64 ? (uint64_t)handle : *(const uint64_t *)handle;
    if (!(t->info & 1) || bits >= 64) return (int64_t)raw;
    const unsigned pad = 64 - bits;   // sign-extend a narrower signed value
    return (int64_t)(raw << pad) >> pad;
}

[[noreturn]] void report(int status, const SourceLocation &loc, const TypeDescriptor *type,
                         int64_t value)
{
    // msg: the type's name, a tab, the file the line belongs to (a header's, or the kernel's)
    snprintf(S.res->msg, sizeof S.res->msg, "%s\t%s", type->name, loc.file ? loc.file : "");
    S.res->line = (int32_t)loc.line;
    S.res->op = loc.column;
    S.res->offset = (uint64_t)value;
    fail(status);
}

}  // namespace

extern "C" {
// (-fno-sanitize-recover: the compilers call only the _abort forms; both are here, so that
// a kernel built with recovery on still links and reports)
void __ubsan_handle_out_of_bounds_abort(OutOfBoundsData *d, uintptr_t index)
{
    report(PAL_BOUNDS, d->loc, d->array, int_value(d->index, index));
}
void __ubsan_handle_out_of_bounds(OutOfBoundsData *d, uintptr_t index)
{
    __ubsan_handle_out_of_bounds_abort(d, index);
}
void __ubsan_handle_shift_out_of_bounds_abort(ShiftData *d, uintptr_t, uintptr_t amount)
{
    report(PAL_SHIFT, d->loc, d->lhs, int_value(d->rhs, amount));
}
void __ubsan_handle_shift_out_of_bounds(ShiftData *d, uintptr_t lhs, uintptr_t amount)
{
    __ubsan_handle_shift_out_of_bounds_abort(d, lhs, amount);
}
}
