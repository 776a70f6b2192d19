"""Attacks on the grader's verdict through a submission's CUDA C (hunt 28).

The kernel host (grading/kernel_host.py) builds and launches the learner's CUDA C so that
the learner's Python cannot fake a launch; but the CPU executor loads the kernel library
into that process, and code the library runs at load time (a constructor, a global object,
an ifunc resolver) ran there, outside the launch's sandbox: it replaced the kernel runner's
Python and passed workbook 02's empty gather kernel.
"""
import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel
from pagedattn_lab.cpu.errors import KernelCompileError

KERNEL = r"""
extern "C" __global__ void k(float *x) { x[threadIdx.x] = 1.0f; }
"""
# Each writes a marker file when the library is loaded: none may run.
LOAD_TIME = {
    "constructor": "__attribute__((constructor)) static void f() { %s }",
    "constructor with a priority": "__attribute__((constructor(101))) static void f() { %s }",
    "destructor": "__attribute__((destructor)) static void f() { %s }",
    "global object": "struct G { G() { %s } }; static G g;",
    "global object's destructor": "struct G { ~G() { %s } }; G g;",
    "computed global": "static int f() { %s return 1; } static int g = f();",
    "init_array pointer": ("static void f() { %s } __attribute__((section(\".init_array\"), used)) "
                           "static void (*p)() = f;"),
    "init_array by section type": (
        "static void f() { %s } __attribute__((section(\"pal,\\\"aw\\\",@init_array #\"), used)) "
        "static void (*p)() = f;"),
    "ifunc resolver": ("extern \"C\" { static void real() {} static void *pick() { %s "
                       "return (void *)real; } void chosen() __attribute__((ifunc(\"pick\"))); }\n"
                       "__attribute__((used)) static void (*use)() = chosen;"),
}


def _marker(path):
    return f'FILE *m = fopen("{path}", "w"); if (m) fclose(m);'


@pytest.mark.usefixtures("own_kernel_cache")
@pytest.mark.parametrize("instrumented", [False, True], ids=["plain", "instrumented"])
@pytest.mark.parametrize("kind", sorted(LOAD_TIME))
def test_code_that_runs_when_the_library_loads_is_refused(tmp_path, kind, instrumented):
    marker = tmp_path / "ran"
    source = LOAD_TIME[kind] % _marker(marker) + KERNEL
    refused = None
    try:   # the launch loads the library (a destructor would run only at exit)
        RawKernel(source, "k")((1,), (4,), (np.zeros(4, np.float32),), racecheck=instrumented)
    except KernelCompileError as exc:
        refused = exc
    assert not marker.exists(), f"the {kind} ran when the library was loaded"
    assert refused is not None and "runs code when its library is loaded" in str(refused)


@pytest.mark.usefixtures("own_kernel_cache")
def test_a_kernel_with_constant_globals_still_builds_both_ways():
    source = ("static const float SCALE = 0.5f; __device__ int table[4] = {1, 2, 3, 4};\n"
              'extern "C" __global__ void k(float *x) { x[threadIdx.x] = SCALE * '
              "table[threadIdx.x]; }\n")
    for racecheck in (False, True):
        x = np.zeros(4, np.float32)
        RawKernel(source, "k")((1,), (4,), (x,), racecheck=racecheck)
        np.testing.assert_array_equal(x, [0.5, 1, 1.5, 2])



@pytest.mark.parametrize("declaration, use", [
    ('extern "C" int __real_fork(void);', "__real_fork()"),   # --wrap's way to the real fork
    ("namespace pal { struct State; extern State S; }", "*(const unsigned *)&pal::S"),
])
@pytest.mark.usefixtures("own_kernel_cache")
def test_a_kernel_may_not_name_the_runtime_internals(declaration, use):
    source = declaration + '\nextern "C" __global__ void k(int *x) { x[0] = (int)(' + use + "); }\n"
    with pytest.raises(KernelCompileError, match="refers to the CPU executor's own runtime"):
        RawKernel(source, "k").compile()

GATHER_SIGNATURE = r"""
extern "C" __global__ void gather_kv(const float* k_cache, const float* v_cache,
                                     const int* block_tables, const int* seq_lens,
                                     float* k_out, float* v_out,
                                     int max_len, int max_pages, int page_size,
                                     int num_kv_heads, int head_dim)
"""
# Right values, but thread 0 copies the whole row alone (the store count fails it).
ONE_THREAD_BODY = r"""{
    %s
    if (threadIdx.x != 0) return;
    int t = blockIdx.x, b = blockIdx.y, row_len = num_kv_heads * head_dim;
    long long out_row = ((long long)b * max_len + t) * row_len;
    for (int i = 0; i < row_len; ++i) {
        if (t >= seq_lens[b]) { k_out[out_row + i] = 0.0f; v_out[out_row + i] = 0.0f; continue; }
        long long slot = (long long)block_tables[b * max_pages + t / page_size] * page_size
                         + t %% page_size;
        long long src = (slot * num_kv_heads + i / head_dim) * head_dim + i %% head_dim;
        k_out[out_row + i] = k_cache[src];
        v_out[out_row + i] = v_cache[src];
    }
}
"""


def _gather(prefix="", first_line=""):
    from pagedattn_lab import check
    source = prefix + GATHER_SIGNATURE + ONE_THREAD_BODY % first_line
    return check.gather_kernel(source, device="cpu")


def test_a_kernel_that_will_not_build_instrumented_keeps_its_store_count():
    """The instrumented build failing made the check fall back to the plain one, with no
    race check and no counts: the one-thread copy passed."""
    result = _gather("#ifdef __SANITIZE_THREAD__\n#error no counts\n#endif\n")
    assert not result.passed


def test_a_kernel_that_knows_it_is_counted_fails():
    """pal::S.instr told the counted launch (which stored nothing) from the checked one."""
    result = _gather('#include "../scheduler.h"\n',
                     "if (pal::S.instr & PAL_INSTR_COUNT) return;")
    assert not result.passed


def test_the_counted_launch_must_store_what_the_checked_one_did(monkeypatch):
    """However a kernel tells the launches apart: a counted launch that stores nothing was
    compared with outputs the CPU's checked launch had already written into the same arrays."""
    from pagedattn_lab import check
    from pagedattn_lab.grading import kernel_runner
    from tests.check_helpers import solution_source
    real = kernel_runner.Kernel.count

    def stores_nothing_when_counted(self, grid, block, args, *rest, **kw):
        return real(self, grid, block, [a.copy() if isinstance(a, np.ndarray) else a
                                        for a in args], *rest, **kw)

    monkeypatch.setattr(kernel_runner.Kernel, "count", stores_nothing_when_counted)
    result = check.gather_kernel(solution_source("02_page_access.ipynb", "SOURCE_GATHER"),
                                 device="cpu")
    assert not result.passed


# Run in a process of its own, unprivileged (the kernel host's uid has no capabilities):
# `harden` as the kernel host does, then kernels that reach for the launching process.
REACH_OUT = r"""
import numpy as np, sys
from pagedattn_lab.cpu import RawKernel
from pagedattn_lab.grading import kernel_host
kernel_host.harden()
src = r'''
#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>
static volatile int g = 7;
extern "C" __global__ void k(int *x) {
    x[0] = g;
    char path[64]; snprintf(path, sizeof path, "/proc/%d/mem", (int)getppid());
    int fd = open(path, O_RDWR), v = 42;
    x[1] = fd >= 0 ? (int)pwrite(fd, &v, sizeof v, (off_t)(uintptr_t)&g) : -1;
    if (x[2]) {   // fork and setsid found past the linker's --wrap
        typedef pid_t (*f_t)(void);
        pid_t p = ((f_t)dlsym(RTLD_DEFAULT, "fork"))();
        if (p == 0) { ((f_t)dlsym(RTLD_DEFAULT, "setsid"))(); sleep(5); _exit(0); }
    }
}
'''
kern = RawKernel(src, "k")
for _ in range(2):
    x = np.zeros(3, np.int32)
    kern((1,), (1,), (x,))
print("parent's variable", x[0])
try:
    kern((1,), (1,), (np.array([0, 0, 1], np.int32),))
    print("forked")
except RuntimeError as exc:
    print("refused:", exc)
"""


def test_the_kernel_host_keeps_its_workers_out_of_its_memory_and_processes(tmp_path):
    """Without harden (the kernel host's own uid, no capabilities) the second launch read 42,
    written into the launching process by the first, and the third left a process behind."""
    import os
    import shutil
    import subprocess
    import sys

    command = [sys.executable, "-c", REACH_OUT]
    if os.geteuid() == 0:   # root's capabilities would pass the checks harden relies on
        if not shutil.which("setpriv"):
            pytest.skip("running as root without util-linux's setpriv to drop capabilities")
        command = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--ambient-caps",
                   "-all", "--", *command]
    env = {**os.environ, "PAGEDATTN_LAB_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("PAGEDATTN_LAB_CPU_SANDBOX", None)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "parent's variable 7" in proc.stdout, proc.stdout
    assert "refused:" in proc.stdout and "cannot start processes" in proc.stdout, proc.stdout


REPLACE_THE_RUNNER = r"""
#include <dlfcn.h>
__attribute__((constructor)) static void replace_the_kernel_runner() {
    typedef int (*run_t)(const char *); typedef int (*ensure_t)(void);
    typedef void (*release_t)(int);
    run_t run = (run_t)dlsym(RTLD_DEFAULT, "PyRun_SimpleString");
    ensure_t ensure = (ensure_t)dlsym(RTLD_DEFAULT, "PyGILState_Ensure");
    release_t release = (release_t)dlsym(RTLD_DEFAULT, "PyGILState_Release");
    if (!run || !ensure) return;
    int gil = ensure();
    run("from pagedattn_lab.grading import kernel_runner as kr\n"
        "from pagedattn_lab.grading.variants import gather_variant as gv\n"
        "def launch(self, grid, block, args, shared_mem=0, outputs=()):\n"
        "    return [gv(args[0], args[2], args[3], int(args[6])),\n"
        "            gv(args[1], args[2], args[3], int(args[6]))]\n"
        "kr.Kernel.launch = kr.Kernel.launch_once = launch\n");
    release(gil);
}
"""


def test_an_empty_kernel_with_a_constructor_does_not_pass_under_the_grader(tmp_path):
    """The constructor ran in the kernel host when the library was loaded and replaced the
    kernel runner's launch with the reference: workbook 02's empty kernel passed."""
    import nbformat

    from tests.test_grade import _load
    from tests.test_grade_kernel_host import _grade
    nb = _load("exercises", "02_page_access.ipynb")
    cell = next(c for c in nb.cells if c.source.startswith("SOURCE_GATHER"))
    cell.source = cell.source.replace('r"""\n', 'r"""\n' + REPLACE_THE_RUNNER, 1)
    (tmp_path / "subs" / "mallory").mkdir(parents=True)
    nbformat.write(nb, tmp_path / "subs" / "mallory" / "02_page_access.ipynb")
    table = _grade(tmp_path / "subs", tmp_path / "grades.csv", "auto")
    row = table[("mallory/02_page_access.ipynb", "gather_kernel")]
    assert row["result"] != "pass", row
    # on a GPU, NVRTC refuses the host code before the CPU executor ever builds it
    from pagedattn_lab.backend import gpu_available
    refusal = "does not compile" if gpu_available() else "runs code when its library is loaded"
    assert refusal in row["message"], row


def test_an_untrusted_cache_is_not_linked_after_a_kernel_wrote_it(tmp_path, monkeypatch):
    """A launch's workers can write the compile cache (the kernel host's uid): a runtime
    object given a constructor there was linked into the next kernel and ran when it loaded.
    Here the test writes it, as such a kernel can."""
    import shutil
    import subprocess

    from pagedattn_lab.cpu import compiler
    monkeypatch.setenv("PAGEDATTN_LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_TRUST_CACHE", "0")
    RawKernel(KERNEL, "k").compile()
    cmd, ident, _ = compiler.compiler()
    host_o = next(o for o in compiler.runtime_objects(cmd, ident, compiler._fiber_mode())
                  if o.endswith("host.o"))
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.cpp"
    evil.write_text("#include <stdio.h>\n" + LOAD_TIME["constructor"] % _marker(marker) + "\n")
    subprocess.run([*cmd, "-fPIC", "-c", str(evil), "-o", str(tmp_path / "evil.o")], check=True)
    subprocess.run([*cmd, "-r", "-nostdlib", host_o, str(tmp_path / "evil.o"), "-o",
                    str(tmp_path / "host.o")], check=True)
    shutil.copyfile(tmp_path / "host.o", host_o)
    x = np.zeros(4, np.float32)
    RawKernel(KERNEL.replace("1.0f", "2.0f"), "k")((1,), (4,), (x,))
    assert not marker.exists()
    np.testing.assert_array_equal(x, 2)


def test_a_puzzle_kernel_that_computes_otherwise_on_the_gpu_fails():
    """With a GPU the puzzles' outputs came from the GPU and the counts from the CPU run: a
    kernel under #ifdef __PAGEDATTN_LAB_CPU__ showed the budget one kernel and the values
    another. Here the GPU is a stand-in that returns what such a kernel would."""
    from pagedattn_lab.grading.puzzle_runner import PuzzleKernel
    from pagedattn_lab.grading.report import Mismatch
    source = ('extern "C" __global__ void map_add_10(const float *a, float *out) '
              "{ out[threadIdx.x] = 0.0f; }")

    class OtherOnTheGpu:
        def launch(self, grid, block, args, shared_mem=0, outputs=()):
            return [args[0] + 10]

    kern = PuzzleKernel(source, "map_add_10", "cpu")
    kern.device, kern._gpu = "gpu", OtherOnTheGpu()
    a = np.arange(8, dtype=np.float32)
    with pytest.raises(Mismatch, match="differ from those of the CPU executor's run"):
        kern.run((1,), (8,), (a, np.full(8, np.nan, np.float32)), outputs=(1,))
