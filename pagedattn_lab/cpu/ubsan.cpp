// The handlers of the compiler's checks on kernel code (kernel_checks.py's flags, in the
// layout GCC and Clang share with their sanitizer library, which is not linked): an index
// past an array whose size the compiler knows (a local `float acc[8]`, a static __shared__
// `float s[32]`), an access through a pointer past such an array (`float *p = acc; p[8]`,
// GCC's object-size check), and a shift by a negative amount or by at least the value's
// width. Each fails the launch, naming the thread, the line and the values (report.py and
// report_checks.py word it). This file is compiled without the checks (the compiler
// declares these names itself there).
#include "instrument.h"

using namespace pal;

// Append src to dst[*at..cap) (async-signal-safe: the fault and time-out handlers record a
// deferred read, and host.cpp's a refused system call's name, with it: no snprintf there).
extern "C" void pal_append(char *dst, size_t cap, size_t *at, const char *src)
{
    for (; src && *src && *at + 1 < cap; ++src) dst[(*at)++] = *src;
    dst[*at] = 0;
}

namespace {

struct SourceLocation { const char *file; uint32_t line, column; };
struct TypeDescriptor { uint16_t kind, info; char name[1]; };   // name: "'float [8]'"
struct OutOfBoundsData { SourceLocation loc; const TypeDescriptor *array, *index; };
struct ShiftData { SourceLocation loc; const TypeDescriptor *lhs, *rhs; };
// type_check_kind: 0 a load, 1 a store, more: a member access, a reference bound, ...
struct TypeMismatchData { SourceLocation loc; const TypeDescriptor *type;
                          unsigned char log_alignment, type_check_kind; };

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


// Record a check's report in r: msg the type's name, a tab, the file the line belongs to (a
// header's, or the kernel's); line, column (op) and value (offset).
void record(pal_result *r, int status, const SourceLocation &loc, const TypeDescriptor *type,
            int64_t value)
{
    size_t at = 0;
    pal_append(r->msg, sizeof r->msg, &at, type->name);
    pal_append(r->msg, sizeof r->msg, &at, "\t");
    pal_append(r->msg, sizeof r->msg, &at, loc.file);
    r->status = status;
    r->line = (int32_t)loc.line;
    r->op = loc.column;
    r->offset = (uint64_t)value;
}

[[noreturn]] void report(int status, const SourceLocation &loc, const TypeDescriptor *type,
                         int64_t value)
{
    record(S.res, status, loc, type, value);
    fail(status);
}

// Record an access of d's kind through ptr (lib_offset at ptr - base), past the object the
// compiler traced it to.
void record_past_object(pal_result *r, const TypeMismatchData *d, uintptr_t ptr, uintptr_t base)
{
    r->addr = ptr;
    r->is_write = d->type_check_kind == 0 ? 0 : d->type_check_kind == 1 ? 1 : -1;
    r->region = in_pal_shared(ptr)                      ? PAL_REGION_STATIC_SHARED
                : ptr - (uintptr_t)S.stacks < S.stacks_len ? PAL_REGION_STACK
                                                             : PAL_REGION_UNKNOWN;
    record(r, PAL_OBJSIZE, d->loc, d->type, (int64_t)(ptr - base));
}

[[noreturn]] void report_past_object(const TypeMismatchData *d, uintptr_t ptr)
{
    record_past_object(S.res, d, ptr, ptr - lib_offset(ptr));
    fail(PAL_OBJSIZE);
}

}  // namespace

// A read past an array is reported only when the thread next meets the scheduler (or makes
// another bad access): in `acc[k] += x` GCC checks the load before the index, whose report
// (the index, the array's size) says more; the value read is the neighbouring variable's.
void pal::report_bad_read(Fiber *f)
{
    if (f->bad_read) report_past_object((const TypeMismatchData *)f->bad_read, f->bad_read_at);
}

// The fault and time-out handlers (host.cpp): a deferred read of a thread of the block came
// before the fault or the time-out (and may be its cause: the value it read): record it in r
// in their place, with that thread. Returns 1 if there was one. Async-signal-safe.
extern "C" PAL_HIDDEN int pal_record_deferred_read(pal_result *r)
{
    // the running thread's, else the first other thread's: one that read past an array and
    // then waits in __nanosleep or spins did not meet the scheduler's report since
    const Fiber *f = cur && cur->bad_read ? cur : nullptr;
    for (int i = 0; !f && i < S.n; ++i)
        if (S.fib[i].bad_read) f = &S.fib[i];   // (an exiting thread reports its own)
    if (!f) return 0;
    record_past_object(r, (const TypeMismatchData *)f->bad_read, f->bad_read_at,
                       f->bad_read_base);
    fill_thread(r, f);
    r->signo = 0;
    r->sicode = 0;
    return 1;
}

extern "C" {
// (-fno-sanitize-recover: the compilers call only the _abort forms; both are here, so that
// a kernel built with recovery on still links and reports)
void __ubsan_handle_out_of_bounds_abort(OutOfBoundsData *d, uintptr_t index)
{
    const TypeMismatchData *read = (const TypeMismatchData *)cur->bad_read;
    if (read && (read->loc.line != d->loc.line || read->loc.column != d->loc.column))
        report_bad_read(cur);   // an earlier access's, not this index's load
    report(PAL_BOUNDS, d->loc, d->array, int_value(d->index, index));
}
void __ubsan_handle_out_of_bounds(OutOfBoundsData *d, uintptr_t index)
{
    __ubsan_handle_out_of_bounds_abort(d, index);
}
// (object-size recovers, -fsanitize-recover: this one returns for a read, see above)
void __ubsan_handle_type_mismatch_v1(TypeMismatchData *d, uintptr_t ptr)
{
    Fiber *f = cur;
    if (d->type_check_kind == 0 && !f->bad_read) {
        f->bad_read = d;
        f->bad_read_at = ptr;
        f->bad_read_base = ptr - lib_offset(ptr);
        return;
    }
    report_bad_read(f);   // the first bad access
    report_past_object(d, ptr);
}
void __ubsan_handle_type_mismatch_v1_abort(TypeMismatchData *d, uintptr_t ptr)
{
    report_bad_read(cur);
    report_past_object(d, ptr);
}
void __ubsan_handle_shift_out_of_bounds_abort(ShiftData *d, uintptr_t, uintptr_t amount)
{
    report_bad_read(cur);   // the earlier bad access (the amount may be the value it read)
    report(PAL_SHIFT, d->loc, d->lhs, int_value(d->rhs, amount));
}
void __ubsan_handle_shift_out_of_bounds(ShiftData *d, uintptr_t lhs, uintptr_t amount)
{
    __ubsan_handle_shift_out_of_bounds_abort(d, lhs, amount);
}
}
