"""The CPU executor: the kernel's own variables, block order, read-only built-ins (hunt 184).

(a) A `__device__` array (or a namespace-scope or function `static` one) is global memory on
a GPU, but the access counts knew the array arguments and shared memory only: its loads and
stores were counted nowhere (instrument.cpp dropped their addresses), so a puzzle's budget
passed a kernel that staged its values there (hunt 177's warp sum, now a passing test there).
They are counted as global accesses now, each variable in `by_buffer` as "__device__ <name>"
(device_data.py reads them off the library's symbol table). A template's `__shared__` array,
which GCC leaves out of the shared section, is counted as shared memory (it was counted
nowhere).
(b) Blocks ran in ascending order: a kernel whose block b reads what block b - 1 wrote (no
order on a GPU) passed. A checked launch runs block 0, then the others from the last down.
(c) `gridDim.x = 1` compiled (hunt 182 reported the change at run time); NVRTC refuses it at
compile time, and so does the CPU build now (gridDim and blockDim are const to kernel code).
"""
import sys

import numpy as np
import pytest

from pagedattn_lab.cpu import KernelCompileError, RawKernel, count_accesses
from pagedattn_lab.cpu.device_data import kernel_variables, readable, shared_names
from pagedattn_lab.cpu.kernel_object import Symbol

linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="the kernel's variables are read off an ELF symbol table")

STAGED = r"""
__device__ float staged[64];
static float doubled[64];
__device__ int pal_calls[1];   // named like the runtime's variables: still the kernel's
extern "C" __global__ void k(const float* a, float* out)
{
    int i = threadIdx.x;
    staged[i] = a[i];
    __syncthreads();
    doubled[i] = 2.0f * staged[63 - i];
    __syncthreads();
    out[i] = doubled[(i + 1) % 64];
    if (i == 0) atomicAdd(pal_calls, 1);
}
"""


@linux
def test_device_and_static_arrays_count_as_global_memory():
    """Before: 1 global read and 1 write per thread (a and out), staged and doubled nowhere."""
    a, out = np.arange(64, dtype=np.float32), np.zeros(64, np.float32)
    kern = RawKernel(STAGED, "k")
    counts = count_accesses(kern, (1,), (64,), (a, out))
    np.testing.assert_array_equal(out, 2.0 * a[::-1][(np.arange(64) + 1) % 64])
    one = np.arange(64) == 0   # thread 0's atomic: one read and one write more
    np.testing.assert_array_equal(counts.global_reads[0], 3 + one)
    np.testing.assert_array_equal(counts.global_writes[0], 3 + one)
    assert counts.by_buffer["__device__ pal_calls"].reads == 1
    assert (counts.shared_reads == 0).all() and (counts.shared_writes == 0).all()
    # sectors from the variable's start: a warp's 32 floats are 4; doubled[(i + 1) % 64]
    # is 5 for each warp (floats 1..32, and 33..63 with 0)
    for name, read_sectors in (("__device__ staged", 8), ("__device__ doubled", 10)):
        b = counts.by_buffer[name]
        assert (b.reads, b.writes, b.read_bytes, b.write_bytes) == (64, 64, 256, 256), b
        assert (b.read_requests, b.read_sectors, b.write_sectors) == (2, read_sectors, 8), b
    assert "__device__ staged" in counts.summary()
    # the runtime's variables (threadIdx, pal::S, the shim's state) are not the kernel's
    path = kern._builds[True][2]
    assert sorted(v[0] for v in kernel_variables(path)[0]) == ["doubled", "pal_calls",
                                                                "staged"]


TEMPLATE_SHARED = r"""
template <int N> __device__ float reverse(const float* a)
{
    __shared__ float tile[N];
    tile[threadIdx.x] = a[threadIdx.x];
    __syncthreads();
    return tile[N - 1 - threadIdx.x];
}
extern "C" __global__ void k(const float* a, float* out) { out[threadIdx.x] = reverse<32>(a); }
"""


@linux
def test_a_templates_shared_array_counts_as_shared_memory():
    """GCC drops the section of a template's statics (README's known gap): its __shared__
    array was counted nowhere; it must not count as a __device__ variable either."""
    a, out = np.arange(32, dtype=np.float32), np.zeros(32, np.float32)
    counts = count_accesses(RawKernel(TEMPLATE_SHARED, "k"), (1,), (32,), (a, out))
    np.testing.assert_array_equal(out, a[::-1])
    assert (counts.shared_reads == 1).all() and (counts.shared_writes == 1).all()
    assert (counts.global_reads == 1).all() and (counts.global_writes == 1).all()
    assert list(counts.by_buffer) == ["a", "out"]
    assert counts.shared_wavefronts == counts.shared_requests == 2


@pytest.mark.parametrize("symbol, name", [
    ("scratch", "scratch"), ("_ZL7scratch", "scratch"), ("_ZN3lab5tableE", "lab::table"),
    ("_ZZ1kPfE5count", "count"), ("_ZN12_GLOBAL__N_14seenE", "(anonymous namespace)::seen"),
    ("_Z", "_Z")])
def test_symbol_names_read_as_written(symbol, name):
    assert readable(symbol) == name


def test_shared_names_are_the_shared_declarations_words_only():
    source = ("// __shared__ float commented[4];\n__device__ float g[4];\n"
              "template <int N> __device__ void f() { __shared__ float t[N], u[N]; }\n")
    names = shared_names(source)
    assert {"t", "u", "N"} <= names and not {"g", "commented"} & names


CHAIN = r"""
extern "C" __global__ void chain(float* out)
{
    // block b adds 1 to what block b - 1 wrote: no order on a GPU
    if (threadIdx.x == 0) out[blockIdx.x] = blockIdx.x == 0 ? 1.0f : out[blockIdx.x - 1] + 1.0f;
}
"""


def test_a_block_that_waits_for_the_one_before_it_does_not_pass():
    """Before: blocks ran 0, 1, 2, 3 and out came out [1, 2, 3, 4]. Now 0, 3, 2, 1 (in one
    worker: with several, the order also depends on timing): blocks 3 and 2 read zeros."""
    workers = 1
    out = np.zeros(4, np.float32)
    RawKernel(CHAIN, "chain")((4,), (32,), (out,), workers=workers)
    assert out[0] == 1 and not np.array_equal(out, [1, 2, 3, 4]), out


def test_an_unchecked_launch_keeps_the_ascending_order():
    out = np.zeros(4, np.float32)
    RawKernel(CHAIN, "chain")((4,), (32,), (out,), checked=False)
    np.testing.assert_array_equal(out, [1, 2, 3, 4])


@pytest.mark.parametrize("write", ["gridDim.x = 1", "blockDim.y += 1", "gridDim = dim3(1)"])
def test_a_write_to_griddim_or_blockdim_does_not_compile(write):
    """NVRTC: "expression must be a modifiable lvalue". Before: it compiled, and the change
    was reported after the first block (hunt 182)."""
    source = ('extern "C" __global__ void assigns(float* y)\n{\n    if (threadIdx.x == 0) '
              + write + ";\n    y[threadIdx.x] = gridDim.x;\n}\n")
    with pytest.raises(KernelCompileError) as info:
        RawKernel(source, "assigns")((2,), (32,), (np.zeros(64, np.float32),))
    e = info.value
    assert e.lineno == 3, str(e)
    assert any("read-only built-ins" in h and "modifiable lvalue" in h for h in e.hints), str(e)


@pytest.mark.parametrize("symbol, counted", [
    ("scratch", True), ("_ZN3lab5tableE", True), ("_ZL7scratch", True),
    # libstdc++'s, linked into the library by the H200 machine's toolchain (session 34): they
    # were listed as the kernel's __device__ variables, in notebook 03's counts too
    ("_ZN10__cxxabiv120__unexpected_handlerE", False),
    ("_ZN10__cxxabiv119__terminate_handlerE", False),
    ("_ZNSs4_Rep20_S_empty_rep_storageE", False),
    ("_ZNSt8ios_base4Init11_S_refcountE", False), ("_Reserved", False)])
def test_only_names_a_kernel_could_define_count_as_its_variables(symbol, counted):
    from pagedattn_lab.cpu.device_data import _kernel_could_name
    assert _kernel_could_name(symbol) is counted


# A symbol table that a monkeypatch stands in for: one writable section (1), a local of the
# kernel's file and the globals after it, as a linker lays them out.
_TABLE_HEAD = [Symbol("kernel.cpp", 4, 0, 0xFFF1, 0, 0, 0, 0)]


@pytest.mark.parametrize("symbol, local, one_worker", [
    ("_Scratch", False, True),                          # a reserved name
    ("_ZN4KeepILi1EE1vE", False, True),                 # Keep<1>::v, a template's static
    ("_ZN11__pal_asyncL6queuesE", True, False),         # the shim's cp.async queues
    ("_ZN10__cxxabiv119__terminate_handlerE", False, False),   # the C++ library's
    ("_ZNSs4_Rep20_S_empty_rep_storageE", False, False),
])
def test_globals_readable_cannot_name_run_in_one_worker(monkeypatch, symbol, local, one_worker):
    """Before: a kernel's global that readable() cannot name (`_Scratch`, a class template's
    static member), declared where the source check does not see it (a header, a macro),
    had one copy per worker. The shim's state is per block (restarted by each block's
    serial): a copy per worker is right for it."""
    from pagedattn_lab.cpu import device_data   # noqa: PLC0415
    table = _TABLE_HEAD + [Symbol(symbol, 1, 0 if local else 1, 1, 0x4000, 64, 0, 0),
                           Symbol("pal_launch_begin", 2, 1, 2, 0x1000, 8, 0, 0)]
    monkeypatch.setattr(device_data, "loadable_path", lambda path: path)
    monkeypatch.setattr(device_data, "elf_bytes", lambda path: b"ELF")
    monkeypatch.setattr(device_data, "section_headers",
                        lambda data: ([(0, 0, 0), (0, 1, 3), (0, 1, 6)], 0))
    monkeypatch.setattr(device_data, "string_at", lambda data, at: ".data")
    monkeypatch.setattr(device_data, "elf_symbols", lambda data: iter(table))
    monkeypatch.setattr(device_data, "_runtime_names", lambda: frozenset())
    path = f"fake-{symbol}.so"   # (the table is cached by path)
    assert device_data.holds_writable_globals(path, "") is one_worker
    assert not device_data.kernel_variables(path)[0]   # (counted as none of its variables)
