"""Review of hunts 107-113 (hunt 114): the CPU executor's guard check and build messages,
unpack_tables's sizes."""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelFault, RawKernel

# A zero-length static __shared__ array has no size in the symbol table: the pal_shared
# section holds no sized variable before the guard, and the nearest data symbol before it is
# the runtime's own (pal_sandbox_level), which the report named as "the last static
# __shared__ variable".
_ZERO_LENGTH = r"""
// a pointer the compiler cannot trace to its array (GCC's object-size check stops a
// traced one at once, hunt 140): the guard after the array catches this one
__device__ __noinline__ float* opaque(float* p) { return p; }
extern "C" __global__ void spill(const float* x, float* out, int shift)
{
    __shared__ float s[0];
    float* p = opaque(s);
    p[threadIdx.x + shift] = x[threadIdx.x];
    out[threadIdx.x] = 1.0f;
}
"""


def test_a_guard_write_with_no_sized_shared_variable_names_no_runtime_symbol():
    x, out = np.arange(4, dtype=np.float32), np.zeros(4, np.float32)
    with pytest.raises(KernelFault) as info:
        RawKernel(_ZERO_LENGTH, "spill")((1,), (4,), (x, out, np.int32(0)))
    e = info.value
    assert e.region == "static shared memory" and e.block == (0, 0, 0)
    assert e.variable is None and e.offset is None, (e.variable, str(e))
    assert "pal_" not in str(e) and "past a static __shared__ array, by" in str(e)


# Logs as the compilers write them (the build's warnings are on since hunt 113; only its
# errors belong in the message). compile_error is called directly: no Clang on this machine.
_VLA_SRC = "\n".join(f"// line {i}" for i in range(1, 12))
_CLANG_LOG = """\
kernel.cu:4:9: warning: shift count >= width of type [-Wshift-count-overflow]
    4 |   int u = 1 << 40;
      |             ^  ~~
kernel.cu:8:15: error: variable length arrays in C++ are a Clang extension [-Werror,-Wvla-cxx-extension]
    8 |     float acc[n];
      |               ^
kernel.cu:8:15: note: function parameter 'n' with unknown value cannot be used in a constant expression
1 warning and 1 error generated.
"""
_GCC_LOG = """\
kernel.cu: In function 'float helper(float)':
kernel.cu:4:1: warning: no return statement in function returning non-void [-Wreturn-type]
kernel.cu: In function 'void row_sums(const float*, float*, int)':
kernel.cu:9:5: error: 'undeclared_name' was not declared in this scope
"""


def test_clangs_warning_count_is_left_out_with_the_warnings():
    from pagedattn_lab.cpu.compile_errors import compile_error
    e = compile_error("row_sums", "kernel.cu", _VLA_SRC, _CLANG_LOG, "clang++ :: clang 18")
    assert [line for _, line, _, _ in e.errors] == [8] and e.lineno == 8
    assert "warning" not in str(e) and "note: function parameter 'n'" in str(e)


def test_an_errors_function_is_named_and_a_warnings_function_is_not():
    from pagedattn_lab.cpu.compile_errors import compile_error
    e = compile_error("row_sums", "kernel.cu", _VLA_SRC, _GCC_LOG, "g++ :: gcc 12")
    message = str(e)
    assert "In function 'void row_sums(const float*, float*, int)'" in message
    assert "helper" not in message and "warning" not in message
    assert message.index("In function 'void row_sums") < message.index("undeclared_name")


# unpack_tables checked only that a buffer was long enough: one packed with a larger
# max_batch read the lengths' zero padding as table entries, silently.
def test_unpack_tables_refuses_a_buffer_packed_with_a_larger_max_batch():
    from pagedattn_lab.distributed import pack_tables, unpack_tables
    tables = np.arange(6, dtype=np.int32).reshape(2, 3)
    lens, indptr = np.array([5, 6], np.int32), np.array([0, 1, 3], np.int32)
    with pytest.raises(ValueError, match=r"buf: 51 entries, not the 27 .* max_batch=4, "
                                         r"max_pages=4"):
        unpack_tables(pack_tables(tables, lens, 8, 4, indptr), 4, 4)
    with pytest.raises(ValueError, match=r"buf: 42 entries, not a size pack_tables fills for "
                                         r"max_batch=3"):
        unpack_tables(pack_tables(tables, lens, 8, 4), 3)
    got, got_lens = unpack_tables(pack_tables(tables, lens, 8, 4), 8)   # as packed
    assert got.tolist() == tables.tolist() and got_lens.tolist() == lens.tolist()
    empty = pack_tables(np.zeros((0, 0), np.int32), np.zeros(0, np.int32), 0, 5)
    assert unpack_tables(empty, 0)[0].shape == (0, 0)
