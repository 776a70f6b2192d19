"""Compile kernel sources with the system C++ compiler, cached on disk.

A kernel source becomes a shared library: shim.h + the source (at its own line numbers,
through #line) + one entry point per kernel, linked with the runtime objects (runtime.cpp,
device_api.cpp, host.cpp, fiber_switch.S), which are compiled once per compiler and cached too.

Cache: `cache_dir()` (toolchain.py, which also finds the compiler) = $PAGEDATTN_LAB_CACHE_DIR/cpu,
else $XDG_CACHE_HOME/pagedattn_lab/cpu, else ~/.cache/pagedattn_lab/cpu. Entries are named by
a hash of (source, kernel names, options, shim and runtime files, compiler identity); they are
written to a temporary name and renamed into place, so concurrent processes compiling the same
kernel are safe.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .artifacts import remember, seal, sealed, trusted_cache, unchanged
from .builtins import refuse_uncounted_builtins
from .compile_errors import (compile_error, diagnostic_pragma_error, inline_asm_error,
                             mangled_kernel_error, shared_initializer_error,
                             template_kernel_error)
from .constant_decl import constant_options
from .errors import KernelCompileError
from .includes import dependency_flags, refuse_outside_includes
from .kernel_checks import kernel_flags
from .kernel_object import count_library_copies, inline_assembly, refuse_load_time_code
from .library_calls import refuse_library_calls
from .pch import shim_pch_flags
from .source import quoted_filename, translation_unit
from .tool import run_tool
from .toolchain import GRADING_CXX, cache_dir, compiler, writable_cache_dir

HERE = Path(__file__).resolve().parent
INCLUDE_DIR = HERE / "include"
RUNTIME_SOURCES = ("runtime.cpp", "device_api.cpp", "host.cpp", "sandbox.cpp", "wrap.cpp",
                   "instrument.cpp", "racecheck.cpp", "tsan_hooks.cpp", "ubsan.cpp",
                   "shared_guards.cpp", "fiber_switch.S")
RUNTIME_HEADERS = ("runtime.h", "scheduler.h", "shim_types.h", "instrument.h", "sandbox.h")
# Functions a kernel may not call (wrap.cpp): on Linux every reference to them in the kernel
# library goes to a __wrap_ function that reports the call (-Wl,--wrap).
WRAPPED = ("fork", "vfork", "execv", "execve", "execvp", "execvpe", "fexecve", "system", "popen",
           "posix_spawn", "posix_spawnp", "daemon", "pthread_create", "exit", "_exit", "_Exit",
           "quick_exit", "abort", "kill", "killpg", "raise", "sigqueue", "setsid", "setpgid",
           "execl", "execlp", "execle", "clone", "ptrace", "syscall")
WRAP = sys.platform.startswith("linux")
WRAP_FLAG = "-Wl," + ",".join(f"--wrap={name}" for name in WRAPPED)   # the link's, on Linux
RELRO_FLAG = "-Wl,-z,relro,-z,now"   # full RELRO on Linux: a stray write to the GOT faults
# The checks that refuse a kernel before it is cached: a cached build skips them, so a change
# to them makes new entries (a kernel that a fixed check refuses is not served from the cache).
REFUSING = ("compiler.py", "builtins.py", "compile_errors.py", "includes.py", "kernel_object.py",
            "library_calls.py", "source.py")
SHIM_HEADERS = ("shim.h", "shim_types.h", "shim_half.h", "shim_device.h", "shim_bf16.h",
                "shim_mma.h", "shim_mma_ptx.h", "shim_fp8.h", "shim_async.h",
                "shim_int.h", "shim_warp.h")
# Instrumented builds (access counts, race check): the compiler calls a hook before every
# memory access (-fsanitize=thread, hooks in tsan_hooks.cpp; libtsan is not linked). No
# vectorization, so that the counts follow the source's loads and stores; line tables, so
# that a race names its source lines. No _FORTIFY_SOURCE (Ubuntu's compilers define it): its
# headers turn memcpy into __memcpy_chk, which library_calls.py refuses, and bcopy into a
# builtin copy; without it a kernel's memcpy is the shim's counted one, bcopy a library call.
INSTRUMENT_FLAGS = ["-fsanitize=thread", "-DPAL_INSTRUMENTED=1", "-U_FORTIFY_SOURCE", "-g1",
                    "-gdwarf-4", "-fno-tree-vectorize", "-fno-tree-slp-vectorize"]
# Clang's thread sanitizer leaves out a read that a write to the same address follows in its
# basic block (`acc += x` calls only the write's hook): the counts would miss that read, and
# the race check would call a read-modify-write race "write after write".
CLANG_INSTRUMENT_FLAGS = ["-mllvm", "-tsan-instrument-read-before-write=1"]
BASE_FLAGS = ["-fPIC", "-fno-strict-aliasing", "-fno-threadsafe-statics",
              "-fno-exceptions", "-fno-math-errno", "-fvisibility=hidden",
              "-fdiagnostics-color=never"]
# The runtime is built without warnings (its code is its business). A kernel is built with the
# compiler's default warnings, which -w would silence all of, -Werror=vla (kernel_flags)
# included; they are left out of a failed build's message (compile_errors.py).
QUIET = "-w"
# A plain kernel build is compiled at -O1: lessons and tests build hundreds of kernels and run
# each on small inputs, and -O1 takes ~25% less of the compile (most of a build's time) where
# the runs measured no slower (tests/test_decode_tc_quant.py, 2026-12-05). Instrumented builds
# keep -O2, the level their access counts were set against (-O1 may load a value twice that -O2
# loads once); the runtime, compiled once, too.
PLAIN_OPT, INSTRUMENTED_OPT = "-O1", "-O2"
# -ftrivial-auto-var-init=pattern (GCC 12+, Clang 8+; older compilers build without it): a local
# variable or array the kernel reads before writing (`float acc[8];` then `acc[i] += x`) starts
# as a pattern, not as whatever the CPU stack held (mostly zeros, so such a kernel passed): GCC
# fills 0xfe bytes (a float -1.7e38, an int -16843010), Clang 0xaa bytes for an int, a NaN for
# a float. On a GPU the register's garbage is as wrong; here it is wrong every time.
# No caret lines (GCC's -fno-diagnostics-show-caret, Clang's -fno-caret-diagnostics; each refuses
# the other's): compile_errors.py shows the kernel's line itself, where the compiler's copy
# would quote the entry wrappers that compiler.py appends to the kernel's last line.
OPTIONAL_FLAGS = ["-fno-diagnostics-show-caret", "-fno-caret-diagnostics",
                  "-fstack-clash-protection",
                  "-ftrivial-auto-var-init=pattern"]


def _files_hash(names) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode())
        h.update((HERE / name).read_bytes())
    for p in sorted(INCLUDE_DIR.glob("*")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _fiber_mode() -> str:
    mode = os.environ.get("PAGEDATTN_LAB_CPU_FIBERS", "asm").strip().lower()
    return "ucontext" if mode == "ucontext" else "asm"


@functools.lru_cache(maxsize=None)
def _supported_flags(cmd: tuple[str, ...], ident: str) -> tuple[str, ...]:
    """The OPTIONAL_FLAGS this compiler accepts (probed once, remembered on disk)."""
    cache = writable_cache_dir(cache_dir()) / "flags.json"
    # (the list in the key: a flag added to it is probed on a machine that probed the others)
    key = hashlib.sha256("\0".join([ident, *OPTIONAL_FLAGS]).encode()).hexdigest()[:16]
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:   # (only flags of the list: the file is in a cache others can write)
        return tuple(f for f in known[key] if f in OPTIONAL_FLAGS)
    ok = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text("int pal_probe(int x) { return x + 1; }\n")
        for flag in OPTIONAL_FLAGS:
            r = run_tool([*cmd, "-Werror", flag, "-c", str(src), "-o", str(Path(tmp) / "p.o")])
            if r.returncode == 0:
                ok.append(flag)
    known[key] = ok
    tmp_path = cache.with_name(f".flags-{os.getpid()}.json")
    tmp_path.write_text(json.dumps(known))
    os.replace(tmp_path, cache)
    return tuple(ok)


_OWN_RUNTIME: dict = {}   # untrusted cache (artifacts.py): the runtime this process built


def runtime_objects(cmd: tuple[str, ...], ident: str, fibers: str) -> tuple[str, ...]:
    """The runtime's objects: compiled once into the cache, or, where the cache is not
    trusted (artifacts.py), into a folder of this process's own, built again if changed."""
    if trusted_cache():
        return _cached_runtime_objects(cmd, ident, fibers)
    objs = _OWN_RUNTIME.get((cmd, ident, fibers))
    if objs is None or not unchanged(objs):
        root = writable_cache_dir(cache_dir())
        objs = _build_runtime(cmd, ident, fibers, Path(tempfile.mkdtemp(prefix=".own-", dir=root)))
        remember(objs)
        _OWN_RUNTIME[(cmd, ident, fibers)] = objs
    return objs


def _runtime_dir(ident: str, fibers: str) -> tuple[Path, tuple[str, ...]]:
    """The cache's folder for the runtime built by `ident` and its objects' paths there."""
    files = _files_hash(RUNTIME_SOURCES + RUNTIME_HEADERS)
    key = hashlib.sha256(f"{ident}|{fibers}|{files}".encode()).hexdigest()[:24]
    final = writable_cache_dir(cache_dir()) / f"runtime-{key}"
    return final, tuple(str(final / (Path(s).stem + ".o")) for s in RUNTIME_SOURCES)


def _cached_runtime_objects(cmd: tuple[str, ...], ident: str, fibers: str) -> tuple[str, ...]:
    final, objs = _runtime_dir(ident, fibers)
    # looked for at every compile, not remembered: the cache may be deleted at any time
    # (cpu/README.md), and a link naming a deleted object fails
    if all(os.path.exists(o) for o in objs):
        return objs
    tmp = Path(tempfile.mkdtemp(prefix=".runtime-", dir=final.parent))
    _build_runtime(cmd, ident, fibers, tmp)
    try:
        os.rename(tmp, final)
    except OSError:          # another process finished first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return objs


def adopt_cached_runtime() -> bool:
    """Where the cache is not trusted: take the runtime objects in the cache now as this
    process's own, as if it had built them (their digests remembered: changed later, they
    are built again). Only for a process in which no kernel has run yet, whose cache holds
    what a trusted process put there: the grader's kernel host, whose cache the grader seeds
    with its own build of the runtime (grade.py), spares a build (~5 s) per submission."""
    cmd, ident, _ = compiler()
    fibers = _fiber_mode()
    _, objs = _runtime_dir(ident, fibers)
    if trusted_cache() or not all(os.path.isfile(o) for o in objs):
        return False
    remember(objs)
    _OWN_RUNTIME[(cmd, ident, fibers)] = objs
    return True


def _build_runtime(cmd, ident: str, fibers: str, tmp: Path) -> tuple[str, ...]:
    """Compile the runtime's sources into objects in `tmp`; returns their paths."""
    defs = (["-DPAL_FIBER_UCONTEXT"] if fibers == "ucontext" else []) + (
        ["-DPAL_WRAP"] if WRAP else [])
    for src in RUNTIME_SOURCES:
        lang = [] if src.endswith(".S") else ["-std=c++17"]
        r = run_tool([*cmd, *lang, INSTRUMENTED_OPT, *BASE_FLAGS, QUIET, *defs, "-c",
                      str(HERE / src), "-o", str(tmp / (Path(src).stem + ".o"))])
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise KernelCompileError(f"the CPU executor's runtime ({src}) does not compile with "
                                     f"{ident}:\n{r.stderr[-4000:]}", log=r.stderr)
    return tuple(str(tmp / (Path(s).stem + ".o")) for s in RUNTIME_SOURCES)


def parse_options(options) -> tuple[list[str], list[str]]:
    """NVRTC options -> (compiler flags honoured on the CPU, options ignored here)."""
    flags, ignored = [], []
    opts = list(options or ())
    i = 0
    while i < len(opts):
        o = str(opts[i])
        if o in ("-D", "-U", "-I", "--define-macro", "--undefine-macro", "--include-path") \
                and i + 1 < len(opts):
            letter = {"--define-macro": "-D", "--undefine-macro": "-U",
                      "--include-path": "-I"}.get(o, o)
            flags.append(letter + str(opts[i + 1]))
            i += 2
            continue
        if o.startswith(("-D", "-U", "-I")):
            flags.append(o)
        elif o.startswith(("--define-macro=", "--undefine-macro=", "--include-path=")):
            letter = {"--d": "-D", "--u": "-U", "--i": "-I"}[o[:3]]
            flags.append(letter + o.split("=", 1)[1])
        elif o.startswith(("-std=", "--std=")):
            flags.append("-std=" + o.split("=", 1)[1])
        else:
            ignored.append(o)
        i += 1
    return flags, ignored


class CompiledKernel:
    """A compiled library: path, whether it came from the cache, and the compile time."""

    def __init__(self, path: str, cached: bool, seconds: float):
        self.path, self.cached, self.seconds = path, cached, seconds


def compile_source(source: str, kernel_names: list[str], options=(), *, filename: str,
                   kernel: str, instrumented: bool = False, bounds: bool = True
                   ) -> CompiledKernel:
    """Compile `source` into a shared library exporting __pal_entry_<name> for each name
    (`instrumented`: with the access hooks of counting and race checking; `bounds`: with the
    check of indices past an array, kernel_flags)."""
    refused = (shared_initializer_error(kernel, filename, source)
               or diagnostic_pragma_error(kernel, filename, source)
               or mangled_kernel_error(kernel, filename, source)
               or template_kernel_error(kernel, filename, source))
    if refused:
        raise refused
    cmd, ident, is_clang = compiler()
    fibers = _fiber_mode()
    flags, _ignored = parse_options(options)
    if os.environ.get(GRADING_CXX):   # graded: -D, -U and -std= only (what the kernels need)
        flags = [f for f in flags if not f.startswith("-I")]
    std = [f for f in flags if f.startswith("-std=")]
    flags = constant_options([f for f in flags if not f.startswith("-std=")], source)
    old_std = ("-std=c++11", "-std=c++14", "-std=c++03")
    std = ["-std=c++17"] if not std or std[-1] in old_std else std[-1:]
    tu = translation_unit(source, kernel_names, filename, str(HERE / "shim.h"), flags)
    opt = INSTRUMENTED_OPT if instrumented else PLAIN_OPT
    base = (*std, opt, *BASE_FLAGS, *kernel_flags(is_clang, bounds),
            *_supported_flags(cmd, ident), "-I", str(INCLUDE_DIR))
    instrument = (*INSTRUMENT_FLAGS, *(CLANG_INSTRUMENT_FLAGS if is_clang else ())
                  ) if instrumented else ()
    all_flags = [*base, *flags, *instrument]
    shim_flags = (*base, *instrument)   # the compile's flags but the kernel's own
    shim_hash = _files_hash(SHIM_HEADERS + RUNTIME_HEADERS + RUNTIME_SOURCES + REFUSING)
    key = hashlib.sha256("\0".join([tu, ident, fibers, shim_hash, *all_flags]).encode()).hexdigest()
    root = writable_cache_dir(cache_dir())
    final = root / f"k-{key[:32]}.so"
    if final.exists() and (trusted_cache() or sealed(str(final)) or unchanged([final])):
        return CompiledKernel(str(final), True, 0.0)
    objs = runtime_objects(cmd, ident, fibers)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pagedattn_lab-") as tmp:
        tu_path = Path(tmp) / "kernel.cpp"
        tu_path.write_text(tu)
        out = root / f".tmp-{os.getpid()}-{key[:12]}-{time.time_ns()}.so"
        shared, libs = ["-shared"], []
        if sys.platform == "darwin":
            shared += ["-undefined", "dynamic_lookup"]
        elif sys.platform.startswith("linux"):
            libs = ["-ldl"]   # dladdr, for glibc before 2.34
            shared.append(RELRO_FLAG)
        if WRAP:
            shared.append(WRAP_FLAG)
        # Compile, assemble and link apart: the compiler's assembly is checked for inline
        # assembly and the kernel's own object for load-time code (kernel_object.py) before
        # anything is assembled, linked or loaded; and linked with -fsanitize=thread, the
        # driver would add libtsan, which cannot be loaded into a running Python (our hooks
        # replace it).
        obj, asm_path = Path(tmp) / "kernel.o", Path(tmp) / "kernel.s"
        pch_key = hashlib.sha256("\0".join([ident, shim_hash, *shim_flags]).encode()).hexdigest()
        pch = shim_pch_flags(cmd, is_clang, shim_flags, HERE / "shim.h", pch_key, root)
        r = run_tool([*cmd, *all_flags, *pch, *dependency_flags(Path(tmp)), "-S", str(tu_path),
                  "-o", str(asm_path)])
        refuse_outside_includes(Path(tmp), cmd, HERE, kernel=kernel, filename=filename,
                                compiled=r.returncode == 0)
        if r.returncode == 0:
            if inline_assembly(str(asm_path)):
                raise inline_asm_error(kernel, filename, source)
            if instrumented:
                refuse_uncounted_builtins(cmd, all_flags, tu_path, quoted_filename(filename),
                                          kernel=kernel, filename=filename)
            r = run_tool([*cmd, "-c", str(asm_path), "-o", str(obj)])
        if r.returncode == 0:
            refuse_load_time_code(str(obj), instrumented, kernel=kernel, filename=filename)
            if instrumented:
                count_library_copies(str(obj))
                refuse_library_calls(str(obj), kernel=kernel, filename=filename)
            defs = ["-Wl,-z,defs"] if instrumented and sys.platform.startswith("linux") else []
            r = run_tool([*cmd, *shared, *defs, str(obj), *objs, *libs, "-o", str(out)])
        if r.returncode != 0:
            out.unlink(missing_ok=True)
            raise compile_error(kernel, filename, source, r.stderr + r.stdout, ident, flags)
        seal(str(final), out.read_bytes())
        os.replace(out, final)
    return CompiledKernel(str(final), False, time.perf_counter() - t0)
