"""The grader attacked through a kernel's pointers into the CPU executor's runtime (hunt 195).

A counted launch keeps its counters in the kernel's own process: the runtime's state
(`pal::S`, whose `cfg->counts` points at the per-thread counters) lies at a fixed offset from
a runtime variable a kernel may name (`__pal_dyn_smem`). A one-thread gather that set its own
store count back to 1 through that pointer passed check.gather_kernel, where its store count
fails it. Refused now, each in a counted launch: a plain store outside the kernel's arrays,
shared memory, variables and its own stack (a wild write, instrument.cpp; in a race-checked
launch too, where clearing `S.instr` switched the race check off), and one that starts in a
`__device__` variable and runs past its end (only its first byte was checked); printf's `%n`,
which stores through its argument (device_api.cpp); the template poison's `__pal_spoison`
given another serial (device_api.cpp); an instrumentation hook called by name
(`__tsan_atomic32_store`, builtins.py). One kernel build serves the launches.
"""
import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel, count_accesses, device_data
from pagedattn_lab.cpu.builtins import uncounted_builtins
from pagedattn_lab.cpu.errors import KernelFault
from pagedattn_lab.cpu.kernel_object import elf_bytes, elf_symbols
from tests.test_cpu_state_hunt182 import _STATE_GUARD   # (before pal::S in pal::state_area)

# The counters, found from __pal_dyn_smem's address (`to_state`: pal::S's offset from it, read
# off the library's symbol table); thread 0's global store count set back to 0 three ways,
# and (how 4) S.instr cleared.
TAMPER = r"""
struct Cfg { void *entry, **args; unsigned grid[3], block[3];
             unsigned long long shared_mem, stack_bytes;
             int nworkers, checked, poison, timeout_s; unsigned instrument, nranges;
             const unsigned long long *ranges; unsigned *counts; };
// A kernel's globals that device_data.readable cannot name: its stores are its own.
__device__ float _Scratch[1];
template <int N> struct Keep { static float v[N]; };
template <int N> __device__ float Keep<N>::v[N];
__device__ long long eight_bytes;   // (how 9: an 8-byte store at its byte 4 runs 4 bytes past)
extern "C" __global__ void k(float *x, long long to_state, int how) {
    x[0] = 1.0f;
    if (how == 8) { _Scratch[0] = 2.0f; Keep<1>::v[0] = 3.0f; }
    if (how == 9 || how == 10) {   // (volatile: the compiler's object-size check cannot see it)
        char *volatile at = (char *)&eight_bytes + (how == 9 ? 4 : 0);
        *(long long *)at = -1;
    }
    unsigned *c = (*(const Cfg **)((char *)&__pal_dyn_smem + to_state))->counts;
    if (how == 4) *(unsigned *)((char *)&__pal_dyn_smem + to_state + 8) = 0;   // S.instr
    if (!c) return;
    if (how == 0) c[2] = 0;
    if (how == 1) printf("%n", (int *)&c[2]);
    static unsigned long long unused, serial;
    if (how == 2) __pal_spoison(&unused, 0, (unsigned long long *)&c[1]);
    if (how == 5) printf("%Zn", (unsigned long long *)&c[2]);   // (glibc's size_t length)
    if (how == 6) printf("%In", (int *)&c[2]);                  // (glibc's locale-digits flag)
    if (how == 7) __pal_spoison(&unused, 64, &serial);          // 56 bytes past unused
}
"""


def _symbol_values(path: str, names: set[str]) -> dict[str, int]:
    data = elf_bytes(path)
    return {sym.name: sym.value for sym in elf_symbols(data) if sym.name in names} if data else {}


@pytest.fixture(scope="module")
def tamper():
    kern = RawKernel(TAMPER, "k").compile(instrumented=True)
    where = _symbol_values(kern._builds[True][2], {"_ZN3pal10state_areaE", "__pal_dyn_smem"})
    if len(where) < 2:
        pytest.skip("the library's symbol table names no pal::state_area (not ELF?)")
    return kern, where["_ZN3pal10state_areaE"] + _STATE_GUARD - where["__pal_dyn_smem"]


_PERCENT_N = "a printf format with a %n conversion"


@pytest.mark.parametrize("how, said", [(0, "invalid write at address"),
                                       (1, _PERCENT_N),
                                       (2, "invalid write at address"),
                                       (5, _PERCENT_N),
                                       (6, _PERCENT_N),
                                       (7, "invalid write at address")])
def test_a_counted_kernel_cannot_set_its_own_count_back(tamper, how, said):
    """Before: the launch passed with thread 0's store count 0 (how 0, 1, 5, 6) or the
    block's serial's high half (2), where it made one store; __pal_spoison's memset wrote 56
    bytes past the variable it was given, unchecked (7: only its first byte was asked)."""
    kern, to_state = tamper
    with pytest.raises(KernelFault, match=said) as caught:
        counts = count_accesses(kern, (1,), (1,), [np.zeros(1, np.float32),
                                                   np.int64(to_state), np.int32(how)])
        assert counts.global_writes[0, 0] == 1   # (reached before the fix only: it fails)
    assert caught.value.thread == (0, 0, 0)


@pytest.mark.parametrize("how", [1, 5, 6])
def test_printf_with_n_says_that_n_is_refused_not_printf(tamper, how):
    """Before: "kernel 'k' called printf() by thread ...", worded as a refused system call,
    which told a learner that printf itself was not allowed."""
    kern, to_state = tamper
    with pytest.raises(KernelFault) as caught:
        count_accesses(kern, (1,), (1,), [np.zeros(1, np.float32), np.int64(to_state),
                                         np.int32(how)])
    said = str(caught.value)
    assert "%n, which stores the count of characters printed" in said
    assert "printf without %n works" in said and "called printf()" not in said
    assert "by thread (0,0,0) of block (0,0,0)" in said and caught.value.thread == (0, 0, 0)


@pytest.mark.parametrize("counted", [False, True])
def test_a_store_running_past_a_device_variable_is_refused(tamper, counted):
    """Before: the race-checked launch (not counted) checked a store's first byte only, and
    the counted launch counted the store as the variable's: an 8-byte store at byte 4 of the
    8-byte `eight_bytes` wrote 4 bytes past it (into the next variable or the runtime's
    state) and both launches passed."""
    kern, to_state = tamper
    args = [np.zeros(1, np.float32), np.int64(to_state), np.int32(9)]
    with pytest.raises(KernelFault, match=r"^kernel 'k': invalid write at address 0x[0-9a-f]+ "
                       r"by thread \(0,0,0\) .*: just past the end of the kernel's variable "
                       r"'eight_bytes' \(8 bytes\); a store that runs past") as caught:
        if counted:
            count_accesses(kern, (1,), (1,), args)
        else:
            kern((1,), (1,), tuple(args), racecheck=True)
    assert caught.value.thread == (0, 0, 0) and caught.value.access == "write"


def test_a_whole_store_to_a_device_variable_passes(tamper):
    """(the same 8-byte store at the variable's start)"""
    kern, to_state = tamper
    x = np.zeros(1, np.float32)
    counts = count_accesses(kern, (1,), (1,), [x, np.int64(to_state), np.int32(10)])
    assert counts.global_writes[0, 0] == 2 and x[0] == 1.0
    kern((1,), (1,), (x, np.int64(to_state), np.int32(10)), racecheck=True)


def test_a_race_checked_kernel_cannot_switch_the_race_check_off(tamper):
    """Before: S.instr = 0 in the race-checked launch (no counts: c is NULL) turned the race
    check off for the rest of the launch, and the launch passed."""
    kern, to_state = tamper
    with pytest.raises(KernelFault, match="invalid write at address"):
        kern((1,), (1,), (np.zeros(1, np.float32), np.int64(to_state), np.int32(4)),
             racecheck=True)


@pytest.mark.parametrize("how", [3, 8])
def test_the_same_kernel_counts_its_store_when_it_touches_nothing_else(tamper, how):
    """Before (8): a store to a global of the kernel's that device_data.readable cannot name
    (`_Scratch`, a class template's static member) failed as a wild write, in a counted and
    a race-checked launch."""
    kern, to_state = tamper
    x = np.zeros(1, np.float32)
    counts = count_accesses(kern, (1,), (1,), [x, np.int64(to_state), np.int32(how)])
    assert counts.global_writes[0, 0] == 1 and x[0] == 1.0
    kern((1,), (1,), (x, np.int64(to_state), np.int32(how)), racecheck=True)


@pytest.fixture
def no_anchor(monkeypatch):
    """The library's symbol table as if it had no `pal_launch_begin` (a stripped library, a
    symbol table not read): the kernel's variables and the shim's state are not known."""
    device_data._writable_symbols.cache_clear()
    monkeypatch.setattr(device_data, "_ANCHOR", "no_such_anchor")
    yield
    device_data._writable_symbols.cache_clear()


def test_a_build_whose_variables_are_not_known_may_write_them(tamper, no_anchor):
    """Before: no variable was passed, yet every ELF build refused a store outside the
    arrays, shared memory and the stack: the store to `_Scratch` failed as a wild write in a
    counted and a race-checked launch (pal_config.vars_known now)."""
    kern, to_state = tamper
    x = np.zeros(1, np.float32)
    counts = count_accesses(kern, (1,), (1,), [x, np.int64(to_state), np.int32(8)])
    assert counts.global_writes[0, 0] == 1 and x[0] == 1.0
    kern((1,), (1,), (x, np.int64(to_state), np.int32(8)), racecheck=True)
    assert not device_data.variables_known(kern._builds[True][2])


def test_a_build_whose_variables_are_known_says_so(tamper):
    """(what lets the launches above refuse the wild writes)"""
    assert device_data.variables_known(tamper[0]._builds[True][2])


def _hooks_named(hook: str):
    preprocessed = (f'# 1 "shim.h"\nvoid f();\n'
                    f'# 1 "k.cu"\nvoid g(unsigned *c) {{ {hook}(c); }}\n')
    return uncounted_builtins(preprocessed, "k.cu")


@pytest.mark.parametrize("hook", ["__tsan_atomic32_store", "__tsan_atomic64_fetch_add",
                                  "__tsan_atomic8_exchange"])
def test_an_atomic_instrumentation_hook_called_by_name_is_refused(hook):
    """__tsan_atomic32_store(counter, 0, 5) stored anywhere, uncounted and unchecked."""
    assert _hooks_named(hook) == [(hook, "k.cu")]


@pytest.mark.parametrize("hook", ["__tsan_memcpy", "__tsan_memset", "__tsan_write4"])
def test_the_hooks_that_count_and_check_pass(hook):
    """(shim.h makes a kernel's memcpy __tsan_memcpy: its pieces go through the counts.)"""
    assert _hooks_named(hook) == []
