"""Attacks on the grader through a submission's CUDA C (hunt 36): what a kernel compiled and
launched by the kernel host (grading/kernel_host.py, the CPU executor) could reach besides
its own arrays, and what its compile errors could show the learner."""
import socket
import threading

import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel, count_accesses
from pagedattn_lab.cpu.errors import KernelCompileError


@pytest.fixture(autouse=True)
def _own_cache(own_kernel_cache):
    """Each test a cache of its own (conftest.py: seeded with the runtime, nothing else)."""


# Writes, into every socket it can find among its descriptors, the judge's frame for an
# answer (ids 1 to 8: the judge's requests are numbered from 1) saying the launch returned 42.
FORGE_THE_ANSWER = r"""
#include <sys/stat.h>
#include <unistd.h>
extern "C" __global__ void k(float *x) {
    x[threadIdx.x] = 1.0f;
    for (int fd = 3; fd < 1024; ++fd) {
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
        for (int id = 1; id <= 8; ++id) {
            char json[96];
            int n = snprintf(json, sizeof json, "{\"t\":\"rep\",\"id\":%d,\"value\":42}", id);
            unsigned char frame[100] = {0, 0, 0, (unsigned char)n};
            memcpy(frame + 4, json, n);
            write(fd, frame, 4 + n);
        }
    }
}
"""


def test_a_kernel_cannot_answer_the_judge_for_the_kernel_host():
    """The launch's workers, forked from the kernel host, held its channel to the judge: a
    kernel wrote the answer to the judge's launch request itself (any outputs, any counts),
    and the kernel host's real answer was dropped as one to a request no longer waited for."""
    from pagedattn_lab.grading import kernel_host, remote
    from pagedattn_lab.grading.channel import Channel
    from pagedattn_lab.grading.report import Mismatch

    judge_end, host_end = socket.socketpair()
    judge = remote.Peer(Channel(judge_end), strict=True, call_timeout=120)
    host = threading.Thread(target=kernel_host.serve,
                            args=(kernel_host.kernel_peer(Channel(host_end)),), daemon=True)
    host.start()
    try:   # (built instrumented, as the kernel host builds kernels: refused there too,
        # for its calls of the C library, library_calls.py; the launches' descriptors are
        # closed either way, see the next test)
        kern = judge.request("kernel", source=FORGE_THE_ANSWER, name="k", device="cpu")
        got = kern.launch((1,), (4,), [np.zeros(4, np.float32)], 0, (0,))
    except Mismatch as refused:
        got = str(refused)
    finally:
        judge.channel.close()
        host.join(30)
    assert got != 42, "the kernel's own frame reached the judge as the kernel host's answer"
    if isinstance(got, str):
        assert "calls fstat" in got, got
    else:
        np.testing.assert_array_equal(np.asarray(got[0]), np.ones(4, np.float32))


COUNT_SOCKETS = r"""
#include <sys/stat.h>
extern "C" __global__ void k(int *found) {
    for (int fd = 3; fd < 1024; ++fd) {
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) ++found[0];
    }
}
"""


def test_a_launch_holds_no_descriptor_of_the_launching_process():
    """The same, plainly: a checked launch saw the sockets its caller held."""
    a, b = socket.socketpair()
    try:
        found = np.zeros(1, np.int32)
        RawKernel(COUNT_SOCKETS, "k")((1,), (1,), (found,))
        assert found[0] == 0
    finally:
        a.close()
        b.close()


KERNEL = 'extern "C" __global__ void k(float *x) { x[threadIdx.x] = 1.0f; }\n'


@pytest.mark.parametrize("code", [
    'static void f() { asm volatile("nop"); }',
    'static void f() { __asm__ __volatile__("nop"); }',
    '#define A __as ## m__\nstatic void f() { A("nop"); }',      # pasted together
    'asm(".globl f\\nf: ret");\nextern "C" void f();',           # top-level
])
def test_inline_assembly_is_refused_with_its_hint(code):
    """On the CPU executor inline assembly is host code (a raw system call, an assembler
    `.include` of a host file): the course's kernels keep their PTX under #ifndef
    __PAGEDATTN_LAB_CPU__, so a kernel that reaches the compiler with asm is refused."""
    source = code + "\n" + KERNEL.replace("1.0f;", "1.0f; f();")
    with pytest.raises(KernelCompileError, match="holds inline assembly") as refused:
        RawKernel(source, "k").compile()
    assert any("cannot run on the CPU executor" in h for h in refused.value.hints)


def test_the_library_headers_asm_labels_are_no_inline_assembly():
    """<signal.h> and <wchar.h> name symbols with __asm__ (a kernel of the sandbox's tests
    includes <signal.h>): not refused."""
    source = "#include <signal.h>\n#include <wchar.h>\n" + KERNEL
    x = np.zeros(4, np.float32)
    RawKernel(source, "k")((1,), (4,), (x,))
    np.testing.assert_array_equal(x, 1)


SECRET = "pagedattn-hunt36-secret-line"


@pytest.mark.parametrize("how", [
    'asm(".include \\"%s\\"");',
    # a section's name goes to the assembler as it is: newlines make it assembly
    '__attribute__((section(".data\\n.include \\"%s\\"\\n#"), used)) int x = 1;',
])
def test_an_assembler_include_shows_no_line_of_the_file(tmp_path, how):
    """The assembler's messages quoted the included file line by line ("no such instruction:
    `<the file's line>'"), into the compile error the grader shows the learner."""
    secret = tmp_path / "secret.txt"
    secret.write_text(f"{SECRET} one\n{SECRET} two\n")
    with pytest.raises(KernelCompileError) as refused:
        RawKernel(how % secret + "\n" + KERNEL, "k").compile()
    assert SECRET not in str(refused.value) and SECRET not in refused.value.log


@pytest.fixture
def graded(monkeypatch):
    import shlex

    from pagedattn_lab.cpu import compiler
    monkeypatch.setenv(compiler.GRADING_CXX, shlex.join(compiler.compiler()[0]))


@pytest.mark.parametrize("include", [
    '#include "{path}"',
    '#include "{up}"',                                       # relative, out of the build folder
    '#define FILE_OF(x) #x\n#define P(x) FILE_OF(x)\n#include P({path})',   # computed
])
def test_under_the_grader_a_kernel_includes_no_file_of_the_machine(tmp_path, graded, include):
    """`#include "/etc/passwd"` put the file's lines into the compile error ("'root' does not
    name a type"), which the grader shows the learner."""
    import os
    import tempfile
    secret = tmp_path / "secret.h"
    secret.write_text(f"{SECRET}: x\n")
    up = os.path.relpath(secret, tempfile.gettempdir() + "/pagedattn_lab-build")
    source = include.format(path=secret, up=up) + "\n" + KERNEL
    with pytest.raises(KernelCompileError, match="refused by the grader") as refused:
        RawKernel(source, "k").compile()
    assert "secret.h" in str(refused.value)
    assert SECRET not in str(refused.value) and SECRET not in refused.value.log


def test_under_the_grader_the_cuda_and_system_headers_still_build(graded):
    source = "#include <cuda_fp16.h>\n#include <mma.h>\n#include <stdint.h>\n" + KERNEL
    x = np.zeros(4, np.float32)
    RawKernel(source, "k")((1,), (4,), (x,))
    np.testing.assert_array_equal(x, 1)


@pytest.mark.parametrize("attribute", ["__attribute__((no_sanitize_thread))",
                                       '__attribute__((__no_sanitize__("thread")))',
                                       "[[gnu::no_sanitize_thread]]"])
def test_a_kernel_may_not_leave_the_instrumented_build(attribute):
    """A function so marked is compiled without the hooks: its loads and stores were neither
    counted nor race-checked (the one-thread gather below passed its store count)."""
    source = KERNEL.replace("__global__", "__global__ " + attribute)
    with pytest.raises(KernelCompileError, match="poisoned") as refused:
        count_accesses(RawKernel(source, "k"), (1,), (4,), (np.zeros(4, np.float32),))
    assert any("instrumented build" in h for h in refused.value.hints)


def test_a_one_thread_gather_out_of_the_instrumented_build_fails():
    from pagedattn_lab import check
    from tests.test_grade_attack_hunt28 import GATHER_SIGNATURE, ONE_THREAD_BODY
    source = GATHER_SIGNATURE.replace("__global__",
                                      "__global__ __attribute__((no_sanitize_thread))")
    assert not check.gather_kernel(source + ONE_THREAD_BODY % "", device="cpu").passed


ONE_THREAD_COPY = r"""
#include <strings.h>
#include <unistd.h>
extern "C" __global__ void k(const float *src, float *x, int n) {
    if (threadIdx.x == 0) { %s }
}
"""
NON_TEMPORAL_STORES = (
    "typedef float v4 __attribute__((vector_size(16)));\n"
    "for (int i = 0; i < n; i += 4) __builtin_ia32_movntps(x + i, *(const v4 *)(src + i));")


def _copy(how):
    return RawKernel(ONE_THREAD_COPY % how, "k"), np.arange(1, 33, dtype=np.float32)


def test_a_counted_launch_refuses_stores_it_cannot_count(monkeypatch):
    """The instrumented build sees the loads and stores the compiler emits: one thread that
    wrote the row with a builtin the hooks miss counted 0 stores, and passed the checks of
    who stores what. Whatever wrote them, the bytes a counted launch changed must be
    covered by counted stores. (The builtin itself is refused since hunt 40, builtins.py;
    with that refusal out of the way the launch's own check still catches the stores.)"""
    from pagedattn_lab.cpu import UncountedWrite, compiler
    kern, src = _copy(NON_TEMPORAL_STORES)
    x = np.zeros(32, np.float32)
    kern((1,), (32,), (src, x, np.int32(32)))      # an ordinary launch: as before
    np.testing.assert_array_equal(x, src)
    with pytest.raises(KernelCompileError, match="uses __builtin_ia32_movntps"):
        count_accesses(kern, (1,), (32,), (src, np.zeros(32, np.float32), np.int32(32)))
    monkeypatch.setattr(compiler, "refuse_uncounted_builtins", lambda *a, **k: None)
    with pytest.raises(UncountedWrite, match=r"element 0 of 'x'"):
        count_accesses(kern, (1,), (32,), (src, np.zeros(32, np.float32), np.int32(32)))


@pytest.mark.parametrize("how", [
    "bcopy(src, x, n * 4);",                                    # writes
    "mempcpy(x, src, n * 4);",
    "float row[32]; bcopy(src, row, n * 4); for (int i = 0; i < n; ++i) x[i] = row[i];",  # reads
    "float row[32]; int p[2]; pipe(p); write(p[1], src, n * 4); read(p[0], row, n * 4);"
    " for (int i = 0; i < n; ++i) x[i] = row[i];",
])
def test_an_instrumented_build_refuses_a_kernel_that_calls_the_c_library(how):
    """The hooks see the kernel's own code, not the C library's: reads done by bcopy or by a
    system call counted 0 (a read leaves no trace to find after the launch)."""
    kern, src = _copy(how)
    x = np.zeros(32, np.float32)
    kern((1,), (32,), (src, x, np.int32(32)))      # an ordinary launch: as before
    np.testing.assert_array_equal(x, src)
    with pytest.raises(KernelCompileError, match=r"calls (bcopy|mempcpy|pipe)") as refused:
        count_accesses(kern, (1,), (32,), (src, np.zeros(32, np.float32), np.int32(32)))
    assert "libc" in str(refused.value)


@pytest.mark.parametrize("call", ["memcpy", "__builtin_memcpy"])
def test_a_kernels_memcpy_counts_as_the_copy_loop_it_stands_for(call):
    """memcpy is CUDA device code too: it counted nothing (the instrumented build does not
    see into the library); now each 16 bytes are one access, as a float4 copy loop's."""
    kern, src = _copy(call + "(x, src, n * 4);")
    x = np.zeros(32, np.float32)
    counts = count_accesses(kern, (1,), (32,), (src, x, np.int32(32)))
    np.testing.assert_array_equal(x, src)
    assert counts.global_writes[0, 0] == 8 and counts.global_reads[0, 0] == 8
    assert counts.global_write_bytes.sum() == 128


def test_memcpy_named_by_an_asm_label_is_counted_too():
    """An asm label names the C library's memcpy without the name the shim counts: thread 0
    read the whole row with it and counted no read (and no inline assembly is involved)."""
    source = ('extern "C" void *lib_copy(void *, const void *, unsigned long) '
              '__asm__("memcpy");\n' + ONE_THREAD_COPY % (
                  "float row[32]; lib_copy(row, src, n * 4); "
                  "for (int i = 0; i < n; ++i) x[i] = row[i];"))
    src, x = np.arange(1, 33, dtype=np.float32), np.zeros(32, np.float32)
    counts = count_accesses(RawKernel(source, "k"), (1,), (32,), (src, x, np.int32(32)))
    np.testing.assert_array_equal(x, src)
    assert counts.global_reads[0, 0] == 8


def test_a_weak_reference_to_the_library_is_refused():
    """weakref names memcpy's symbol without the name the shim counts."""
    source = ('static void *copy(void *, const void *, unsigned long) '
              '__attribute__((weakref("memcpy")));\n' + KERNEL)
    with pytest.raises(KernelCompileError, match="poisoned"):
        RawKernel(source, "k").compile()


GATHER_BY_ROWS = r"""{
    if (threadIdx.x != 0) return;
    int t = blockIdx.x, b = blockIdx.y, row = num_kv_heads * head_dim;
    long long out_row = ((long long)b * max_len + t) * row;
    if (t >= seq_lens[b]) {
        CLEAR(k_out + out_row, row * 4);
        CLEAR(v_out + out_row, row * 4);
        return;
    }
    long long src = ((long long)block_tables[b * max_pages + t / page_size] * page_size
                     + t % page_size) * row;
    COPY(k_out + out_row, k_cache + src, row * 4);
    COPY(v_out + out_row, v_cache + src, row * 4);
}
"""
ROW_COPIES = {
    "memcpy": "#define COPY(d, s, n) memcpy(d, s, n)\n#define CLEAR(d, n) memset(d, 0, n)\n",
    "bcopy": "#include <strings.h>\n#define COPY(d, s, n) bcopy(s, d, n)\n"
             "#define CLEAR(d, n) bzero(d, n)\n",
}


@pytest.mark.parametrize("how", sorted(ROW_COPIES))
def test_a_one_thread_gather_that_copies_whole_rows_fails(how):
    """Thread 0 copying each row with one library call: right values, and no store counted:
    the gather kernel passed."""
    from pagedattn_lab import check
    from tests.test_grade_attack_hunt28 import GATHER_SIGNATURE
    result = check.gather_kernel(ROW_COPIES[how] + GATHER_SIGNATURE + GATHER_BY_ROWS,
                                 device="cpu")
    assert not result.passed
    said = {"memcpy": "made 8 stores", "bcopy": "calls bcopy"}[how]
    assert said in result.summary, result.summary
