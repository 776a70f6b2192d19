"""The checks compiled into a kernel's own code (not the runtime's: its code is its business,
not the learner's), as compiler flags for GCC or Clang."""
from __future__ import annotations


# Checks on a kernel's code, each of which stops the thread in ubsan.cpp's handlers (no
# sanitizer library is linked), reported by report.py with the thread, the line and the values.
# Not in the runtime's build: its own code is its business, not the learner's.
# - A shift by a negative amount or by at least its operand's width in bits (`1u << 32`): the
#   GPU's shift instructions clamp the amount (1u << 32 is 0 there), the CPU's wrap it
#   (1u << 0), so a mask `(1u << n) - 1` would silently differ. Undefined in CUDA C++ too.
# - An index past an array whose size the compiler sees (`float acc[8]; acc[8] = x;`, a static
#   `__shared__ float s[32]`): on the CPU it overwrote the thread's other locals or the next
#   array unnoticed. Clang's `bounds` also traps on pointer accesses it can bound (`local-bounds`,
#   a bare trap that says nothing), hence `array-bounds` there.
#   Not on the package's own kernels (`bounds=False`: trusted, run on the GPU under
#   compute-sanitizer): it cost their CPU runs up to 30% (the tiled prefill), in every lesson.
# - With GCC, an access through a pointer past such an array (`float *p = acc; p[i]`, i = 4..7
#   of a float acc[4], which landed in the thread's other locals or saved registers): GCC's
#   object-size check, wherever it traces the pointer to its array (in the function, or a
#   __device__ function inlined into it; not through a call that stays a call). It checks
#   every access to an array of known size: CPU time of learner-shaped kernels (GCC 12,
#   -O1, one worker): an accumulator loop over a float acc[16] +12 to 18%, a tiled matmul
#   and a decode loop over local q and acc arrays within the noise (+-4%), a tighter
#   accumulator loop 35 to 40%. The CPU tests' own kernels (test_cpu_
#   executor, _hunt80, _bounds_hunt102, _counts, _racecheck; compiled, cached): 8.16 s of
#   CPU time with it, 8.10 s without. Worth it: such a write corrupted the thread's saved
#   registers (a wild fault elsewhere, or none) where the GPU reports it. It recovers, so that in `acc[k] += x`,
#   where GCC checks the load before the index, the index check's report (index, array size)
#   still comes first (ubsan.cpp defers a read). Clang's counterpart (local-bounds) is a bare
#   trap, so Clang builds go without it.
# Not the trap mode (-fsanitize-undefined-trap-on-error): GCC 12 traps every check alike.
# And at compile time: a variable-length array (`float acc[n];`, n not a constant expression;
# `const int N = 8; float acc[N];` is none) is a GNU extension that NVRTC refuses ("expression
# must have a constant value"), so it is refused here too, at its line (-Werror=vla).
# And with GCC, -fno-weak: an inline or __forceinline__ __device__ function's statics (its
# `__shared__` arrays, their guards) otherwise go in a COMDAT group of their own, which GCC
# will not put in the pal_shared section beside the kernel's own ("section type conflict").
# The kernel is one translation unit, linked once with the runtime (whose inline functions
# stay weak), so no second definition can clash. (A template function's statics still leave
# the section: GCC drops the section attribute there; source.py poisons them at first use,
# see the README.)
def kernel_flags(is_clang: bool, bounds: bool = True) -> list[str]:
    checks = "shift-exponent" + (f",{'array-bounds' if is_clang else 'bounds'}" if bounds
                                 else "")
    # (object-size recovers: its handler defers a read, see ubsan.cpp)
    pointers = [] if is_clang or not bounds else ["-fsanitize=object-size"]
    return [f"-fsanitize={checks}", f"-fno-sanitize-recover={checks}", *pointers,
            "-Werror=vla", *([] if is_clang else ["-fno-weak"])]


# every form of either compiler's (the grader's sandbox allows these)
KERNEL_FLAGS = tuple(sorted({flag for is_clang in (False, True) for bounds in (False, True)
                             for flag in kernel_flags(is_clang, bounds)}))
