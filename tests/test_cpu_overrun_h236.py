"""An access that runs past the end of one array argument into another's memory.

Arguments whose memory overlaps (views of one buffer, one holding part of the other) share
one guarded mapping (cpu/launch.py): no guard page sits between them, so a store that runs
past the end of one lands in the other. An instrumented launch (counted or race-checked: the
grader's) sees the store: one that starts in one argument and ends past it, held whole by no
argument, stops the thread as an out-of-bounds access of the argument it starts in, landing
in the other; one that another argument holds whole is counted there (a view of the whole
buffer). A change found only after a counted launch, within reach past an argument's end, is
named as that argument's overrun, not as a compiler builtin's store.
"""
import platform

import numpy as np
import pytest

from pagedattn_lab.cpu import KernelFault, RawKernel, count_accesses
from pagedattn_lab.grading.faults import describe_kernel_exception

# copy4: thread t copies four floats to dst[4 * (first + t)], dst being a (which = 0) or b:
# one 16-byte store (a memcpy's, as a GPU thread's copy loop makes them; a float4's assignment
# is four 4-byte stores in the instrumented build). load4: one 16-byte load of a[4 * first..].
_COPY4 = r"""
extern "C" __global__ void copy4(float* a, float* b, int which, int first)
{
    const float v[4] = {1.f, 2.f, 3.f, 4.f};
    float* dst = which ? b : a;
    memcpy(dst + 4 * (first + threadIdx.x), v, sizeof v);
}
extern "C" __global__ void load4(const float* a, const float* b, float* out, int first)
{
    float v[4];
    memcpy(v, a + 4 * first, sizeof v);
    out[threadIdx.x] = v[0] + v[1] + v[2] + v[3];
}
"""
# One 16-byte store that the access hooks do not see (the builtin is refused at compile time,
# builtins.py; the test lifts that refusal to reach the launch's own check).
_UNSEEN_STORE = r"""
typedef float v4 __attribute__((vector_size(16)));
extern "C" __global__ void unseen_store(float* a, float* b, int first)
{
    if (threadIdx.x == 0) __builtin_ia32_movntps(a + first, v4{1.f, 2.f, 3.f, 4.f});
}
"""

INSTRUMENTED = [pytest.param(lambda k, *a: count_accesses(k, *a), id="counted"),
                pytest.param(lambda k, *a: k._launch(*a, racecheck=True), id="race-checked")]


def _overlapping(n: int = 12):
    """a = buf[:6] and b = buf[5:], overlapping by one element: one mapping for both."""
    buf = np.zeros(n, np.float32)
    return buf, buf[:6], buf[5:]


@pytest.mark.parametrize("launch", INSTRUMENTED)
def test_a_store_past_one_arrays_end_into_another_names_both_and_the_thread(launch):
    """Thread 1's copy covers a[4..7]; a has 6 elements, a[6] is b[1]. Before: a counted
    launch refused it after the launch as an UncountedWrite of b[1] blaming a compiler
    builtin; a race-checked one let it change b unreported."""
    buf, a, b = _overlapping()
    with pytest.raises(KernelFault) as info:
        launch(RawKernel(_COPY4, "copy4"), (1,), (2,), (a, b, np.int32(0), np.int32(0)))
    e = info.value
    assert (e.buffer, e.arg_index, e.index, e.size, e.access) == ("a", 0, 6, 6, "write"), str(e)
    assert (e.thread, e.block, e.region, e.slack) == ((1, 0, 0), (0, 0, 0), "argument",
                                                      False), str(e)
    assert (e.into, e.into_index) == ("b", 1), str(e)
    assert ("out-of-bounds write of 'a' (argument 0, float*): element 6, past its end (it has "
            "6 elements), landing in 'b' (argument 1) at its element 1 by thread (1,0,0) of "
            "block (0,0,0)") in str(e), str(e)
    assert not buf.any()   # the launch's writes were discarded
    message, hint = describe_kernel_exception(e)
    assert message.startswith("out-of-bounds write of a[6] (it has 6 elements) by thread "
                              "(1, 0, 0)"), message
    assert "builtin" not in message + hint


@pytest.mark.parametrize("launch", INSTRUMENTED)
def test_a_load_past_one_arrays_end_into_another_is_stopped_too(launch):
    """A 16-byte load of a[4..7]: before, it read b[1] unreported."""
    buf, a, b = _overlapping()
    out = np.zeros(1, np.float32)
    with pytest.raises(KernelFault) as info:
        launch(RawKernel(_COPY4, "load4"), (1,), (1,), (a, b, out, np.int32(1)))
    e = info.value
    assert (e.buffer, e.index, e.access, e.thread, e.into, e.into_index) == (
        "a", 6, "read", (0, 0, 0), "b", 1), str(e)
    assert "out-of-bounds read of 'a' (argument 0, const float*): element 6, past its end" \
        in str(e), str(e)
    assert not out.any()


def test_a_wide_store_that_another_argument_holds_whole_is_counted_there():
    """b is the whole buffer, a its first 6 elements: thread 1's copy through b (b[4..7])
    starts in a (argument 0) and ends past it, inside b. Before: counted as a's store, whose
    last 8 bytes no counted store wrote: UncountedWrite."""
    buf = np.zeros(12, np.float32)
    counts = count_accesses(RawKernel(_COPY4, "copy4"), (1,), (2,),
                            (buf[:6], buf, np.int32(1), np.int32(0)))
    assert buf.tolist() == [1, 2, 3, 4] * 2 + [0] * 4
    assert (counts.by_buffer["a"].writes, counts.by_buffer["b"].writes) == (4, 4)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="the unseen store is an x86 builtin")
def test_a_change_found_after_the_launch_past_an_arrays_end_is_named_as_its_overrun(
        monkeypatch):
    """A store the hooks miss writes a[4..7] (a has 6): the change at a[6] (b[1]) lies
    within reach past a's end. Before: UncountedWrite of a[4], blaming a compiler builtin."""
    from pagedattn_lab.cpu import compiler
    monkeypatch.setattr(compiler, "refuse_uncounted_builtins", lambda *a, **k: None)
    buf, a, b = _overlapping()
    with pytest.raises(KernelFault) as info:
        count_accesses(RawKernel(_UNSEEN_STORE, "unseen_store"), (1,), (1,),
                       (a, b, np.int32(4)))
    e = info.value
    assert (e.buffer, e.arg_index, e.index, e.size, e.access) == ("a", 0, 6, 6, "write"), str(e)
    assert (e.thread, e.block, e.into, e.into_index) == (None, None, "b", 1), str(e)
    assert ("out-of-bounds write of 'a' (argument 0, float*): element 6, past its end (it has "
            "6 elements), landing in 'b' (argument 1) at its element 1, found after the "
            "launch") in str(e), str(e)
    assert "builtin" not in str(e)
    assert not buf.any()
    message, _ = describe_kernel_exception(e)
    assert message.startswith("out-of-bounds write of a[6] (it has 6 elements), found after "
                              "the launch"), message
