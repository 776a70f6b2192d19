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
# Not the trap mode (-fsanitize-undefined-trap-on-error): GCC 12 traps every check alike.
# Not object-size: it also stops a store through a pointer past such an array (`float *p =
# acc; p[8] = x`), but it checks every access to an array of known size, which cost a learner
# kernel's accumulator loop (`acc[k] += v` over a float acc[16]) 35 to 40% more CPU time
# (GCC 12, -O1, hunt 113); in `acc[k] += x` it checks the load before the index, whose report
# (index, array size) it would pre-empt. A write through a pointer past a static __shared__
# array is found after the block instead (the guards of shim.h and runtime.cpp).
# And at compile time: a variable-length array (`float acc[n];`, n not a constant expression;
# `const int N = 8; float acc[N];` is none) is a GNU extension that NVRTC refuses ("expression
# must have a constant value"), so it is refused here too, at its line (-Werror=vla).
def kernel_flags(is_clang: bool, bounds: bool = True) -> list[str]:
    checks = "shift-exponent" + (f",{'array-bounds' if is_clang else 'bounds'}" if bounds
                                 else "")
    return [f"-fsanitize={checks}", f"-fno-sanitize-recover={checks}", "-Werror=vla"]


# every form of either compiler's (the grader's sandbox allows these)
KERNEL_FLAGS = tuple(sorted({flag for is_clang in (False, True) for bounds in (False, True)
                             for flag in kernel_flags(is_clang, bounds)}))
